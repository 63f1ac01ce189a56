"""The optimizer table: one entry per name, the names keys lists, unknown names refused."""

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from ablate import fused, keys, loop, optim
from ablate.data import load as load_data
from ablate.errors import AblateError, StudyError
from ablate.study import Study, cells, validate
from ablate.studyfile import load

ROOT = Path(__file__).parent.parent
SMALL = dict(hidden=(4,), layers=("conv:2:3", "act"))  # an MLP and a CNN for 8x8 digits


def test_the_names_a_study_may_set_are_the_tables_names_in_order():
    assert keys.OPTIMIZERS == tuple(optim.RULES)


def test_an_unknown_optimizer_is_one_line_naming_the_known_ones():
    with pytest.raises(AblateError) as e:
        optim.rule("rmsprop")
    known = ", ".join(keys.OPTIMIZERS)  # sgd, adam, adamw, sgd_nesterov
    assert str(e.value) == f"unknown optimizer 'rmsprop'; expected one of {known}"
    with pytest.raises(AblateError, match="unknown optimizer 'lion'"):
        optim.build([torch.zeros(1, requires_grad=True)], {"optimizer": "lion", "lr": 0.1})
    with pytest.raises(StudyError, match="optimizer='rmsprop' is not allowed; expected one of"):
        validate(Study(name="t", dataset="digits", base=dict(optimizer="rmsprop")))


def test_the_plain_and_the_fused_path_both_refuse_a_name_the_table_lacks():
    # a name keys would list without a rule: no path falls back to another optimizer
    cell = cells(validate(Study(name="t", dataset="digits", base=SMALL, seeds=1)))[0]
    odd = replace(cell, config={**cell.config, "optimizer": "lion"})
    data = load_data("digits")
    with pytest.raises(AblateError, match="unknown optimizer 'lion'"):
        loop.Plain(odd, data, "mlp", "cpu")
    for model in ("mlp", "cnn"):
        with pytest.raises(AblateError, match="unknown optimizer 'lion'"):
            fused.group([odd, odd], data, "cpu", model)


def test_each_name_builds_its_torch_optimizer_with_the_configs_arguments():
    cfg = dict(lr=0.1, momentum=0.9, weight_decay=0.01)
    p = [torch.zeros(2, requires_grad=True)]
    built = {name: optim.build(p, {**cfg, "optimizer": name}) for name in optim.RULES}
    for name, torch_class in {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd_nesterov": torch.optim.SGD,
    }.items():
        assert type(built[name]) is torch_class, name
    assert [built[n].defaults["nesterov"] for n in ("sgd", "sgd_nesterov")] == [False, True]
    assert all(
        o.defaults["weight_decay"] == 0.01 and o.defaults["lr"] == 0.1 for o in built.values()
    )
    adamw = built["adamw"].defaults  # decoupled weight decay: its class's own, nothing passed
    assert (adamw["betas"], adamw["eps"]) == ((0.9, 0.999), 1e-8)
    # torch refuses nesterov without momentum; at momentum 0 its sums are plain SGD's
    flat = optim.build(p, {**cfg, "momentum": 0.0, "optimizer": "sgd_nesterov"})
    assert flat.defaults["nesterov"] is False


def weights_after(name: str, momentum: float, weight_decay: float) -> torch.Tensor:
    """A 3-weight least-squares fit after 5 steps of `name`, from the same start."""
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    cfg = dict(optimizer=name, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    opt = optim.build([w], cfg)
    x = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], dtype=torch.float64)
    for _ in range(5):
        opt.zero_grad()
        ((x @ w - 1.0) ** 2).sum().backward()
        opt.step()
    return w.detach()


def test_every_name_trains_its_own_way_where_its_keys_make_it_differ():
    # with momentum and weight decay every pair of names ends apart: no name falls back to another
    ends = {name: weights_after(name, 0.9, 0.1) for name in optim.RULES}
    for a in ends:
        for b in ends:
            assert a == b or not torch.allclose(ends[a], ends[b]), (a, b)
    # without momentum Nesterov's step is SGD's; without weight decay AdamW's is Adam's
    assert torch.equal(weights_after("sgd", 0.0, 0.1), weights_after("sgd_nesterov", 0.0, 0.1))
    assert torch.equal(weights_after("adam", 0.9, 0.0), weights_after("adamw", 0.9, 0.0))


def test_new_optimizer_names_leave_every_committed_cell_id_as_it_was():
    # `ablate run` on a committed study finds its cells done by these ids: the ids in its
    # results' Parquet files (mnist_mlp: one file per cell, named by its id)
    checked = 0
    for path in sorted((ROOT / "studies").glob("*.py")):
        study = load(path)
        stored = ROOT / "results" / study.name
        if not stored.is_dir():
            continue
        ids = {c.id for c in cells(study)}
        assert ids == set(pd.read_parquet(stored, columns=["cell"])["cell"]), path.name
        checked += len(ids)
    mnist_mlp = ROOT / "results" / "mnist_mlp"
    assert {c.id for c in cells(load(ROOT / "studies" / "mnist_mlp.py"))} == {
        p.stem for p in mnist_mlp.glob("*.parquet")
    }
    assert checked == 390
