"""The runner: what it says before training, and how a study's own model is grouped."""

from test_fused import branchy

from ablate import fused, runner
from ablate.study import Study, validate


class Said(runner.Progress):
    def __init__(self):
        self.warnings = []

    def warn(self, message):
        self.warnings.append(message)


def test_a_study_model_vmap_cannot_take_is_said_once_and_its_cells_train_alone(
    tmp_path, monkeypatch
):
    # a GPU would fuse a study's own model; here the CPU is made to, to reach the fallback
    monkeypatch.setattr(fused, "can_fuse", lambda cells, model, device="cpu": True)
    study = validate(
        Study(
            name="branchy",
            dataset="digits",
            model=branchy,
            base=dict(lr=0.05, epochs=1, batch_size=64, train_subset=256),
            factors=dict(lr=[0.05, 0.1], weight_decay=[0.0, 1e-3]),
            seeds=2,
            source="studies/branchy.py",
        )
    )
    said = Said()
    summary = runner.run(study, tmp_path, device="cpu", progress=said)
    assert summary.trained == 8 and not summary.failed
    assert len(said.warnings) == 1, said.warnings
    line = said.warnings[0]
    assert line.startswith(
        "studies/branchy.py: the model callable trains cell by cell, not fused: "
        "torch.func.vmap cannot take it (RuntimeError: vmap: "
    ), line
    assert "data-dependent control flow" in line and "\n" not in line, line


def test_a_shapes_cells_split_into_the_fewest_groups_of_even_size():
    study = validate(
        Study(
            name="split",
            dataset="digits",
            base=dict(epochs=1),
            factors=dict(lr=[0.01, 0.02], activation=["relu", "tanh"]),
            seeds=5,
        )
    )
    cells = runner.expand(study)  # two shapes (the activations), 10 cells each
    sizes = [len(g) for g in runner.groups(cells, 8)]
    assert sizes == [5, 5, 5, 5]
    assert [len(g) for g in runner.groups(cells, 4)] == [3, 3, 4, 3, 3, 4]
    assert [len(g) for g in runner.groups(cells, 10)] == [10, 10]
    # every cell once, and a group holds one shape only
    grouped = runner.groups(cells, 3)
    assert sorted(c.id for g in grouped for c in g) == sorted(c.id for c in cells)
    assert all(len({fused.shape_key(c) for c in g}) == 1 for g in grouped)
    # on a GPU an MLP's activation does not split its groups (fused.SELECTED_KEYS): each cell
    # selects its own there; a CPU keeps one shape a group
    assert [len(g) for g in runner.groups(cells, 20, "cuda", "mlp")] == [20]
    assert [len(g) for g in runner.groups(cells, 20, "cpu", "mlp")] == [10, 10]
    assert [len(g) for g in runner.groups(cells, 20, "cuda", "cnn")] == [10, 10]
