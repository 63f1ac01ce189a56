"""The runner: what it says before training, how a study's own model is grouped, and the test
predictions it stores."""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ablate import data, executor, fused, predictions, readback, runner
from ablate.errors import AblateError
from ablate.executor import Progress, RunOptions
from ablate.study import Study, validate
from helpers import REPO, branchy, write_study


class Said(Progress):
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
    summary = runner.run(study, RunOptions(tmp_path, "cpu", progress=said))
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


def test_every_executor_name_builds_its_class_and_an_unknown_name_is_one_line():
    assert list(runner.EXECUTORS) == list(executor.KINDS)
    assert all(isinstance(name, str) for name in runner.EXECUTORS)
    with pytest.raises(AblateError, match=r"^--executor dask: expected local or ray$"):
        RunOptions(executor="dask")
    with pytest.raises(AblateError, match=r"^--address h:1: only used with --executor ray$"):
        RunOptions(address="h:1")
    with pytest.raises(AblateError, match=r"^--groups-per-gpu 0: expected 1 or more$"):
        RunOptions(executor="ray", groups_per_gpu=0)


def test_the_run_options_are_one_frozen_value():
    options = RunOptions("out", "cpu", 4)
    assert (options.out, options.device, options.max_group, options.executor) == (
        "out",
        "cpu",
        4,
        "local",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.device = "cuda"


def test_a_local_run_checks_its_models_and_groups_on_its_own_device(tmp_path):
    said = Said()
    study = predicting_study()
    local = runner.EXECUTORS["local"](study, RunOptions(tmp_path, "cpu", progress=said))
    assert local.device.type == "cpu" and local.label().startswith("cpu: ")
    local.check(runner.expand(study))  # a built-in MLP that fits the digits: nothing said
    assert said.warnings == [] and local.classes == 10 and len(local.data.test_y) == 899
    local.close()


def predicting_study(name="preds", seeds=2, lrs=(0.05, 1e30), source="studies/preds.py"):
    """8 digits cells (899 test images) in 2 shapes; lr 1e30 diverges in its first epoch."""
    return validate(
        Study(
            name=name,
            dataset="digits",
            base=dict(lr=0.05, epochs=2, batch_size=64, train_subset=256),
            factors=dict(lr=list(lrs), activation=["relu", "gelu"]),
            seeds=seeds,
            source=source,
        )
    )


def check_predictions(folder):
    """Every ok cell's predictions, each scoring its stored final test_acc exactly; no diverged
    cell's; every predictions file recorded in _files.json beside its group's rows file."""
    said = []
    labels, predicted = predictions.read_predictions(folder, warn=said.append)
    assert not said, said
    final = readback.read(folder).groupby("cell").tail(1).set_index("cell")
    assert set(predicted) == set(final.index[final["status"] == "ok"])
    assert labels.dtype == np.int16 and labels.tolist() == data.load("digits").test_y.tolist()
    for cell, guess in predicted.items():
        assert guess.dtype == np.int16 and guess.shape == labels.shape
        assert np.count_nonzero(guess == labels) / len(labels) == final.loc[cell, "test_acc"]
    record = json.loads((folder / readback.RECORD).read_text())["files"]
    side = sorted((folder / predictions.PREDICTIONS).iterdir())
    for f in side:
        assert record[f"{predictions.PREDICTIONS}/{f.name}"]["sha256"] == readback.sha256(f), f
    rows = {f.name for f in readback.parquet_files(folder)}
    assert {f.name for f in side} - {predictions.LABELS} <= rows  # each beside its rows file
    assert len(pd.read_parquet(folder)) == len(readback.read(folder))  # readers skip _predictions
    return predicted


def test_a_run_stores_each_ok_cells_test_predictions_scoring_its_final_test_acc_exactly(
    tmp_path,
):
    said = Said()
    summary = runner.run(predicting_study(), RunOptions(tmp_path, "cpu", 4, progress=said))
    assert summary.trained == 8 and len(summary.diverged) == 4 and not said.warnings
    predicted = check_predictions(tmp_path / "preds")
    assert len(predicted) == 4 and not set(predicted) & set(summary.diverged)
    # a group of 2 ok and 2 diverged cells: one file of 2 cells per shape
    side = tmp_path / "preds" / predictions.PREDICTIONS
    assert sorted(len(pq.read_table(f)) for f in side.glob("g*.parquet")) == [2, 2]


def test_no_predictions_stores_none_and_a_rerun_with_them_resumes_without_training(tmp_path):
    study = predicting_study(lrs=(0.05,), seeds=1)
    first = runner.run(study, RunOptions(tmp_path, "cpu", predictions=False, progress=Said()))
    assert first.trained == 2 and not (tmp_path / "preds" / predictions.PREDICTIONS).exists()
    again = runner.run(study, RunOptions(tmp_path, "cpu", progress=Said()))
    assert again.skipped == 2 and again.trained == 0  # the option is in no cell's id
    assert predictions.read_predictions(tmp_path / "preds") == (None, {})  # as a folder from before


def test_the_cli_flag_turns_predictions_off(tmp_path):
    from typer.testing import CliRunner

    from ablate.cli import app

    body = DIGITS.format(name="flag", seeds=1, lrs=[0.05])
    study = write_study(tmp_path, name="flag", body=body)
    result = CliRunner().invoke(
        app, ["run", str(study), "--out", str(tmp_path / "r"), "--no-predictions"]
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "r" / "flag" / predictions.PREDICTIONS).exists()
    assert len(readback.parquet_files(tmp_path / "r" / "flag")) == 1


def test_a_test_set_past_the_limit_stores_no_predictions_and_says_so_once(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "MAX_PREDICTED", 100)  # digits has 899 test images
    said = Said()
    summary = runner.run(predicting_study(lrs=(0.05,)), RunOptions(tmp_path, "cpu", progress=said))
    assert summary.trained == 4 and not (tmp_path / "preds" / predictions.PREDICTIONS).exists()
    assert said.warnings == [
        "the test set has 899 examples (over 100): this run stores no per-example test predictions"
    ]


DIGITS = """
from ablate import Study

study = Study(
    name={name!r},
    dataset="digits",
    base=dict(lr=0.05, epochs=2, batch_size=64, train_subset=256),
    factors=dict(lr={lrs}),
    seeds={seeds},
)
"""


@pytest.mark.parametrize(
    "hook", ["predictions:1:written", "predictions:1:renamed", "record:2:written"]
)
@pytest.mark.slow
def test_kill_9_between_a_groups_predictions_and_its_rows_leaves_no_half_state(tmp_path, hook):
    # record 1 is labels.parquet's, record 2 the first group's predictions'
    body = DIGITS.format(name="killed", seeds=2, lrs=[0.05, 0.1])
    study = write_study(tmp_path, name="killed", body=body)
    command = [sys.executable, "-m", "ablate", "run", str(study), "--out", str(tmp_path / "r")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "ABLATE_TEST_KILL": hook}
    killed = subprocess.run([*command, "--max-group", "2"], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    folder = tmp_path / "r" / "killed"
    assert not readback.parquet_files(folder)  # no rows: the first group is untrained
    assert (folder / predictions.PREDICTIONS / predictions.LABELS).is_file()
    env.pop("ABLATE_TEST_KILL")
    done = subprocess.run([*command, "--max-group", "2"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(check_predictions(folder)) == 4
    left = [p for p in folder.rglob("*") if ".tmp-" in p.name]
    assert not left, left


@pytest.mark.slow
def test_ray_brings_each_groups_predictions_back_to_the_driver(tmp_path):
    pytest.importorskip("ray")
    study = predicting_study(lrs=(0.05, 1e30), seeds=1)
    summary = runner.run(study, RunOptions(tmp_path, "cpu", executor="ray", progress=Said()))
    assert summary.trained == 4 and len(summary.diverged) == 2
    assert len(check_predictions(tmp_path / "preds")) == 2
