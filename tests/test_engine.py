"""The plain path against a plain PyTorch loop; repeatability, divergence, own models, groups."""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ablate import engine, fused, loop, models, runner
from ablate.data import load
from ablate.errors import StudyError
from ablate.executor import Progress, RunOptions
from ablate.study import Study, cells, validate

BASE = dict(
    hidden=(64,),
    activation="relu",
    dropout=0.0,
    lr=0.05,
    momentum=0.5,
    batch_size=50,
    epochs=2,
    train_subset=1000,
)


def one_cell(**over):
    st = validate(Study(name="t", dataset="mnist", base={**BASE, **over}, seeds=[4]))
    return cells(st)[0]


@pytest.mark.slow
def test_per_step_losses_equal_a_plain_pytorch_loop(data_dir):
    d = load("mnist", "cpu", data_dir)
    cell = one_cell()
    trace = []
    rows = engine.train_cell(cell, d, "mlp", "cpu", trace=trace)

    # the reference: a hand-written loop over the same model init and the same sample order
    net = models.build("mlp", cell.config, (1, 28, 28), 10, seed=4)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.5)
    x_all, y_all = d.train_x[:1000].float() / 255, d.train_y[:1000]
    ref = []
    for epoch in (1, 2):
        order = loop.epoch_order(4, epoch, 1000, "cpu")
        for s in range(0, 1000, 50):
            idx = order[s : s + 50]
            loss = F.cross_entropy(net(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            ref.append(loss.item())
    assert len(trace) == 40
    assert trace == ref  # bitwise: the same ops in the same order
    assert math.isclose(
        rows[-1]["train_loss"], sum(ref[20:]) / 20, rel_tol=1e-6
    )  # fp32 sum vs Python sum
    net.eval()
    with torch.no_grad():
        acc = (net(d.test_x.float() / 255).argmax(1) == d.test_y).float().mean().item()
    assert abs(rows[-1]["test_acc"] - acc) < 1e-6


def test_a_cell_repeats_exactly_with_dropout_flips_and_normalisation(data_dir):
    d = load("mnist", "cpu", data_dir)
    cell = one_cell(dropout=0.3, hflip=True, normalize=True, batchnorm=True, epochs=1)
    a = engine.train_cell(cell, d, "mlp", "cpu")
    b = engine.train_cell(cell, d, "mlp", "cpu")

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(a) == strip(b)
    assert a[0]["status"] == "ok" and 0.5 < a[0]["test_acc"] <= 1


@pytest.mark.slow
def test_learning_happens(data_dir):
    rows = engine.train_cell(
        one_cell(train_subset=5000, epochs=2), load("mnist", "cpu", data_dir), "mlp", "cpu"
    )
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert rows[1]["test_acc"] > 0.85


def test_a_diverging_cell_stops_and_says_so(data_dir):
    rows = engine.train_cell(
        one_cell(lr=1e30, epochs=5), load("mnist", "cpu", data_dir), "mlp", "cpu"
    )
    assert len(rows) < 5
    assert all(r["status"] == "diverged" for r in rows)
    assert not math.isfinite(rows[-1]["train_loss"])


def test_a_study_model_trains_through_the_plain_path(data_dir):
    def net(config):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))

    d = load("mnist", "cpu", data_dir)
    st = validate(Study(name="t", dataset="mnist", model=net, base={**BASE, "epochs": 1}, seeds=2))
    rows = engine.train(cells(st), d, net, "cpu")
    assert len(rows) == 2 and all(r[0]["test_acc"] > 0.6 for r in rows)
    assert rows[0][0]["train_loss"] != rows[1][0]["train_loss"]  # seeds differ


def test_the_gpu_group_size_follows_free_memory_and_the_model(data_dir, monkeypatch):
    # no GPU here: the estimate is pure arithmetic on the built model, so fake the free memory
    data = load("mnist", "cpu", data_dir)
    gib = 2**30
    free = {"bytes": 8 * gib}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 * gib))
    mlp = cells(validate(Study(name="t", dataset="mnist", base=dict(hidden=(512, 256)), seeds=1)))
    cnn = cells(
        validate(
            Study(
                name="t",
                dataset="mnist",
                model="cnn",
                base=dict(layers=("conv:64:3", "act")),
                seeds=1,
            )
        )
    )
    cuda = torch.device("cuda")
    small = engine.auto_group(mlp, data, cuda, "mlp")
    # about 17 MB a cell (the MLP's weights, no momentum, two activations of an eval chunk of
    # 2000, the epoch's order): 4 GiB / 17 MB = 255; the reference cell measured 19 MB
    assert 128 <= small <= 512, small
    free["bytes"] = 16 * gib
    assert abs(engine.auto_group(mlp, data, cuda, "mlp") - 2 * small) <= 1
    assert (
        engine.auto_group(cnn, data, cuda, "cnn") < small
    )  # 64 maps of 26x26 per sample outweigh the MLP
    assert engine.auto_group(mlp, data, torch.device("cpu"), "mlp") == 16

    # a study's own model fuses on a GPU too (vmapped): its estimate follows its own size
    def perceptron(cfg):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))

    assert engine.auto_group(mlp, data, cuda, perceptron) > small


def test_a_study_model_with_50_outputs_on_10_classes_stops_before_its_first_step(data_dir):
    def wide(config):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 50))

    d = load("mnist", "cpu", data_dir)
    cell = cells(
        validate(Study(name="t", dataset="mnist", model=wide, base={**BASE, "epochs": 1}, seeds=1))
    )[0]
    said = (
        r"^s\.py: model '.*wide' returns \(2, 50\) for a batch of shape \(2, 1, 28, 28\); "
        r"the dataset has 10 classes, so expected \(2, 10\)$"
    )
    epochs = []
    with pytest.raises(StudyError, match=said):
        engine.train([cell], d, wide, "cpu", lambda *a: epochs.append(a), source="s.py")
    assert epochs == []
    with pytest.raises(
        StudyError, match=said
    ):  # the same check, for the runner before it writes anything
        engine.check_model(wide, cell, d.shape, d.classes, "s.py")


# what torch's CPU allocator raises, verbatim (torch 2.14, torch.empty(2**50, dtype=torch.uint8))
CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 1125899906842624 bytes. Error code 12 (Cannot allocate memory)"
)


def _no_memory(*args, **kwargs):
    raise RuntimeError(CPU_OOM)


def test_cpu_out_of_memory_is_an_out_of_memory_error_on_both_paths(data_dir, monkeypatch):
    monkeypatch.setattr(torch.optim.SGD, "step", _no_memory)
    monkeypatch.setattr(fused.Optimizer, "step", _no_memory)
    d = load("mnist", "cpu", data_dir)
    two = cells(validate(Study(name="t", dataset="mnist", base={**BASE, "epochs": 1}, seeds=2)))

    def own(cfg):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))

    for group, model in (
        (two, "mlp"),
        (two[:1], "mlp"),
        (two[:1], own),
    ):  # fused, plain, a study's model
        with pytest.raises(
            torch.OutOfMemoryError, match="DefaultCPUAllocator: can't allocate memory"
        ):
            engine.train(group, d, model, "cpu", source="s.py")
    assert engine.is_oom(RuntimeError(CPU_OOM)) and engine.is_oom(MemoryError())
    assert not engine.is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


class Warnings(Progress):
    def __init__(self):
        self.said = []

    def warn(self, message):
        self.said.append(message)


@pytest.mark.slow
def test_cpu_out_of_memory_in_a_group_splits_it_and_every_cell_trains(
    tmp_path, data_dir, monkeypatch
):
    monkeypatch.setattr(
        fused.Optimizer, "step", _no_memory
    )  # groups of 2 or more run out, single cells fit
    st = validate(
        Study(name="t", dataset="mnist", base={**BASE, "epochs": 1, "train_subset": 200}, seeds=4)
    )
    progress = Warnings()
    summary = runner.run(st, RunOptions(tmp_path, "cpu", 4, progress=progress))
    assert summary.trained == 4 and summary.failed == []
    assert (
        progress.said
        == ["a group of 4 cells ran out of cpu memory; retrying as 2 + 2"]
        + ["a group of 2 cells ran out of cpu memory; retrying as 1 + 1"] * 2
    )


@pytest.mark.parametrize("given, expected", [(None, ":4096:8"), (":16:8", ":16:8")])
def test_importing_ablate_sets_cublas_deterministic_workspace_and_keeps_a_users_value(
    given, expected
):
    # cuBLAS reads the variable at a process's first GEMM on a GPU, so it must be set at import,
    # before a notebook's or a test's first matmul, not when a deterministic run starts
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    if given:
        env["CUBLAS_WORKSPACE_CONFIG"] = given
    code = "import os, ablate; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected, out
