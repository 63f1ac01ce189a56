"""On a GPU: fused groups equal their cells alone, determinism, memory, precisions, the draws."""

import gc
import math
import re
import warnings
from collections import Counter

import pytest
import torch

from ablate import engine, fused, graphs, loop, optim, rng, runner
from ablate.data import load
from ablate.executor import Progress, RunOptions
from ablate.study import Study, cells, validate
from helpers import VARIANTS, cnn_group, group, own_group, products_dtypes, residual, small_cnn

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device: a GPU machine runs these (benchmarks/gpu_proof.sh)",
    ),
]
CUDA = "cuda"


def in_groups(cs, data, size, model="mlp"):
    rows = []
    for i in range(0, len(cs), size):
        rows += engine.train(cs[i : i + size], data, model, CUDA)
    return rows


def strip(rows):
    return [[{k: v for k, v in r.items() if k != "seconds"} for r in c] for c in rows]


# The CPU tolerances of tests/test_fused.py: the fused and plain paths differ in the order of
# float sums only (bmm against mm), 5e-16 (fp64) and 1.4e-7 (fp32) measured on the CPU after
# 100 steps. fp32 here is true fp32: loop.tf32 turns TF32 off for it.
@pytest.mark.parametrize(
    "precision, variant",
    [("fp64", v) for v in VARIANTS] + [("fp32", v) for v in VARIANTS if not v.startswith("adam")],
)
def test_a_fused_mlp_cell_is_itself_in_groups_of_1_3_and_8(data_dir, precision, variant):
    rel = 1e-10 if precision == "fp64" else 1e-4
    data = load("mnist", CUDA, data_dir)
    cs = group(precision, VARIANTS[variant])
    assert len(cs) == 8 and fused.can_fuse(cs, "mlp", CUDA)
    alone, threes, eight = (in_groups(cs, data, n) for n in (1, 3, 8))
    for a, b, c in zip(alone, threes, eight, strict=True):
        for key in ("train_loss", "test_loss"):
            assert math.isclose(a[0][key], b[0][key], rel_tol=rel), (key, a[0][key], b[0][key])
            assert math.isclose(a[0][key], c[0][key], rel_tol=rel), (key, a[0][key], c[0][key])
        assert abs(a[0]["test_acc"] - b[0]["test_acc"]) <= 1 / 10000  # within one test sample
        assert abs(a[0]["test_acc"] - c[0]["test_acc"]) <= 1 / 10000
    assert len({r[0]["train_loss"] for r in eight}) == 8  # eight cells, not one copied


# fp64 to 1e-10 as the MLP above (the CPU measured 3.9e-16 for SGD); Adam's 1/sqrt(v) amplifies
# rounding (2.5e-10 on the CPU), so 1e-8; fp32 SGD 1e-4
@pytest.mark.parametrize(
    "precision, optimizer, rel",
    [("fp64", "sgd", 1e-10), ("fp64", "adam", 1e-8), ("fp32", "sgd", 1e-4)],
)
def test_a_cnn_cell_is_itself_in_a_vmapped_group(data_dir, precision, optimizer, rel):
    data = load("mnist", CUDA, data_dir)
    cs = cnn_group(precision, optimizer)
    assert fused.can_fuse(cs, "cnn", CUDA)  # on a GPU the CNN fuses (vmapped)
    grouped = fused.train(cs, data, CUDA, model="cnn")
    for cell, rows in zip(cs, grouped, strict=True):
        alone = engine.train_cell(cell, data, "cnn", CUDA)
        for key in ("train_loss", "test_loss"):
            assert math.isclose(alone[0][key], rows[0][key], rel_tol=rel), (
                key,
                alone[0][key],
                rows[0][key],
            )
        # fp32 rounding flips near-tied argmaxes: 6 of 10,000 measured on the CPU
        limit = (1 if precision == "fp64" else 10) / 10000
        assert abs(alone[0]["test_acc"] - rows[0]["test_acc"]) <= limit
    assert len({r[0]["train_loss"] for r in grouped}) == 4  # four cells, not one copied


# Every optimizer name (optim.RULES) on a GPU: the fused MLP (SGD's step in the backward, and
# captured as a CUDA graph in the group of 8) against torch.optim alone (foreach on CUDA), fp64,
# 100 steps. The CPU measured <= 6e-13 relative on the weights (tests/test_fused.py); the fp64
# tolerance of the test above, 1e-10, holds Adam's amplified rounding there too.
@pytest.mark.parametrize("name", list(optim.RULES))
def test_every_optimizer_trains_a_fused_mlp_cell_as_it_trains_alone(data_dir, name):
    data = load("mnist", CUDA, data_dir)
    lr = 0.002 if name.startswith("adam") else 0.05
    cs = group("fp64", {"optimizer": name, "lr": lr})
    alone, eight = in_groups(cs, data, 1), in_groups(cs, data, 8)
    for a, c in zip(alone, eight, strict=True):
        for key in ("train_loss", "test_loss"):
            assert math.isclose(a[0][key], c[0][key], rel_tol=1e-10), (name, key, a[0], c[0])
        assert abs(a[0]["test_acc"] - c[0]["test_acc"]) <= 1 / 10000
    assert len({r[0]["train_loss"] for r in eight}) == 8  # eight cells, not one copied


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_a_group_repeats_bitwise_on_cuda_in_deterministic_mode(data_dir, model):
    data = load("mnist", CUDA, data_dir)
    if model == "mlp":
        cs = group("fp32", VARIANTS["dropout+flip+norm+bn"])
    else:
        cs = cnn_group("fp32", "sgd")
    engine.configure(deterministic=True)
    try:
        first = fused.train(cs, data, CUDA, model=model)
        second = fused.train(cs, data, CUDA, model=model)
    finally:
        engine.configure(deterministic=False)
    assert strip(first) == strip(second)


REFERENCE = dict(  # the reference study's cell (studies/mnist_mlp.py), shortened
    hidden=(512, 256),
    activation="sigmoid",
    dropout=0.5,
    lr=0.01,
    momentum=0.5,
    batch_size=32,
    epochs=1,
    train_subset=32 * 20,
)
EXAMPLES = dict(  # the PyTorch examples CNN (benchmarks/throughput.py), shortened
    layers=(
        "conv:10:5",
        "maxpool:2",
        "act",
        "conv:20:5",
        "dropout2d:0.5",
        "maxpool:2",
        "act",
        "flatten",
        "fc:50",
        "act",
        "dropout:0.5",
    ),
    activation="relu",
    lr=0.01,
    momentum=0.5,
    batch_size=64,
    epochs=1,
    train_subset=64 * 20,
)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_the_default_group_size_is_sized_on_the_card_and_trains_there(data_dir, model):
    data = load("mnist", CUDA, data_dir)
    base = REFERENCE if model == "mlp" else EXAMPLES

    def study(seeds):
        return cells(
            validate(Study(name="t", dataset="mnist", model=model, base=base, seeds=seeds))
        )

    gc.collect()
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    size = engine.auto_group(study(1), data, torch.device(CUDA), model)
    assert 2 <= size <= 1024, size
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    rows = engine.train(study(size), data, model, CUDA)
    peak = torch.cuda.max_memory_allocated()
    assert len(rows) == size and all(r[-1]["status"] == "ok" for r in rows)
    # the estimate aims at half the free memory; the group must at least fit in all of it
    assert peak < free, f"{size} cells peaked at {peak / 2**30:.1f} GiB of {free / 2**30:.1f} free"
    # and it must be an estimate: a cell's measured share of the peak within 2x of cell_bytes
    # (the estimate was 66 MB a reference cell against about 19 MB before issue 26)
    estimate = engine.cell_bytes(study(1)[0], data, model)
    measured = (peak - before) / size
    assert estimate / 2 <= measured <= estimate * 2, (
        f"{model}: {measured / 1e6:.1f} MB a cell measured, {estimate / 1e6:.1f} MB estimated"
    )


# The CPU tolerances for bf16 (tests/test_fused.py): 8 mantissa bits, 2.6e-3 measured between
# the paths after 100 steps, so 1e-2 relative, and 0.01 of accuracy early in training. TF32
# keeps 10 mantissa bits, so the same bounds hold; that it differs from fp32 at all shows the
# tensor cores ran (on a CPU tf32 is fp32 bitwise). bf16 also steps after the backward where
# fp32 steps inside it, so its difference proves nothing: its products' dtype is asserted.
@pytest.mark.parametrize("precision", ["bf16", "tf32"])
@pytest.mark.parametrize("variant", ["sgd", "dropout+flip+norm+bn"])
def test_bf16_and_tf32_run_on_tensor_cores_and_stay_close_to_fp32(data_dir, precision, variant):
    data = load("mnist", CUDA, data_dir)
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    low = group(precision, VARIANTS[variant])
    alone, eight = in_groups(low, data, 1), in_groups(low, data, 8)
    fp32 = in_groups(group("fp32", VARIANTS[variant]), data, 8)
    for a, c, f in zip(alone, eight, fp32, strict=True):
        assert a[0]["train_loss"] != f[0]["train_loss"] and c[0]["train_loss"] != f[0]["train_loss"]
        assert math.isclose(a[0]["train_loss"], c[0]["train_loss"], rel_tol=1e-2)
        assert math.isclose(c[0]["train_loss"], f[0]["train_loss"], rel_tol=1e-2)
        assert abs(c[0]["test_acc"] - f[0]["test_acc"]) <= 0.01
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
    if precision == "bf16":
        assert products_dtypes(low, data) == {torch.bfloat16}


def test_the_counter_based_draws_are_bitwise_equal_on_cpu_and_cuda():
    keys = [rng.key(0, rng.ORDER, 1), torch.tensor([[rng.key(s, rng.DROPOUT, 3)] for s in (0, 7)])]
    for k in keys:
        on_gpu = k.to(CUDA) if isinstance(k, torch.Tensor) else k
        for draw in (rng.bits, rng.uniform24, rng.permutation):
            for n in (1, 1000, 60_000):
                cpu, gpu = draw(k, n, "cpu"), draw(on_gpu, n, CUDA)
                assert gpu.device.type == "cuda" and torch.equal(cpu, gpu.cpu()), (draw, n)
    seeds = torch.tensor([[0], [7], [2**32 - 1]])  # the loop's per-epoch draws for a group
    for draw in (loop.epoch_order, loop.epoch_flips):
        assert torch.equal(
            draw(seeds, 3, 60_000, "cpu"), draw(seeds.to(CUDA), 3, 60_000, CUDA).cpu()
        )


# fp64 as on the CPU, where the vmapped study models matched to 4e-16 (tests/test_fused.py)
@pytest.mark.parametrize("model", [residual, small_cnn], ids=["mlp-like", "cnn-like"])
def test_a_study_model_trains_fused_on_cuda_and_is_itself_alone(model):
    data = load("digits", CUDA)
    cs = own_group(model)
    assert fused.can_fuse(cs, model, CUDA)
    assert engine.own_model_problem(model, cs[0], data.shape, data.classes) is None
    grouped = [r[-1] for r in engine.train(cs, data, model, CUDA)]  # fused: can_fuse said so
    alone = [engine.train_cell(cell, data, model, CUDA)[-1] for cell in cs]
    for a, b in zip(alone, grouped, strict=True):
        for key in ("train_loss", "test_loss"):
            assert math.isclose(a[key], b[key], rel_tol=1e-10), (key, a[key], b[key])
        assert abs(a["test_acc"] - b["test_acc"]) <= 1 / 899  # within one test sample
    assert len({r["train_loss"] for r in alone}) == 8  # eight cells, not one copied


def test_a_captured_step_replays_every_full_batch_and_equals_the_eager_step_bitwise(
    data_dir, monkeypatch
):
    # the reference cell's keys (sigmoid, dropout) and ReLU + batchnorm in one wide group, two
    # epochs of 20 full batches and a shorter last one: the graph's run against ABLATE_CUDA_GRAPHS=0
    data = load("mnist", CUDA, data_dir)
    base = {**REFERENCE, "epochs": 2, "train_subset": 32 * 20 + 7, "hflip": True}
    factors = dict(activation=["sigmoid", "relu"], batchnorm=[False, True])
    cs = cells(validate(Study(name="g", dataset="mnist", base=base, factors=factors, seeds=2)))
    assert fused.can_fuse(cs, "mlp", CUDA)  # wide: activation and batchnorm mixed on a GPU
    made = []
    original = graphs.Replayed

    class Recorded(original):
        def __init__(self, step):
            super().__init__(step)
            made.append(self)

    monkeypatch.setattr(graphs, "Replayed", Recorded)
    engine.configure(deterministic=True)
    try:
        replayed = fused.train(cs, data, CUDA)
        monkeypatch.setenv("ABLATE_CUDA_GRAPHS", "0")
        eager = fused.train(cs, data, CUDA)
    finally:
        engine.configure(deterministic=False)
    assert len(made) == 1 and made[0].graph is not None and not made[0].failed
    assert strip(replayed) == strip(eager)
    assert len({r[-1]["train_loss"] for r in replayed}) == len(cs)


def cuda_syncs(epochs: int, steps: int) -> Counter:
    """Where torch's sync debug mode warns while loop.train runs a fused digits MLP group on
    CUDA (after a warm-up run): a Counter of (file, line) of the Python that made each sync."""
    base = dict(hidden=(32,), dropout=0.2, hflip=True, batchnorm=True, batch_size=32)
    base = {**base, "epochs": epochs, "train_subset": 32 * steps}
    st = validate(Study(name="t", dataset="digits", base=base, seeds=3))
    cs, data = cells(st), load("digits", CUDA)
    loop.train(fused.group(cs, data, CUDA), cs, data, CUDA)  # warm-up: handles, kernels, caches
    fresh = fused.group(cs, data, CUDA)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            loop.train(fresh, cs, data, CUDA)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return Counter(
        (w.filename.rsplit("/", 2)[-1], w.lineno) for w in said if "synchroniz" in str(w.message)
    )


def test_an_epoch_on_cuda_syncs_a_fixed_number_of_times_whatever_its_steps():
    one = cuda_syncs(epochs=1, steps=5)
    assert cuda_syncs(epochs=1, steps=20) == one, "a sync per step"
    per_epoch = cuda_syncs(epochs=2, steps=5) - one
    # the rows need three: the train losses, the evaluation's losses and hits (loop.py's tolist)
    assert 0 < sum(per_epoch.values()) <= 3, (one, per_epoch)


# The out-of-memory tests come last: they fill the card (under a cap) and a failure there must
# not cost the tests above their budget.
CAP = 4 * 2**30  # bytes: a real out of memory at 4 GiB, whatever the card (80 GiB H100, 141 H200)


@pytest.fixture
def capped():
    """The caching allocator limited to CAP for one test: the too-wide models then hold tens of
    millions of parameters, not the 110M that took 20-55 s to initialise serially on the CPU
    at an H100's free memory."""
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(CAP / total)
    try:
        yield CAP
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        gc.collect()
        torch.cuda.empty_cache()


class Warnings(Progress):
    def __init__(self):
        self.said = []

    def warn(self, message):
        self.said.append(message)


def too_wide(cells_wanted: int, times_free: float) -> dict:
    """A digits MLP config whose group of `cells_wanted` needs about `times_free` x the memory left
    under CAP: a training step of batch 898 holds about three [G, 898, width] fp32 tensors (the
    activation kept for the backward, its gradient, the gradient before it), 10.8 kB x width per
    cell, plus 16 bytes per parameter (weight, gradient, two optimizer states), 1.2 kB x width."""
    gc.collect()  # a caught out-of-memory error's frames hold the failed group's tensors
    torch.cuda.empty_cache()
    free = CAP - torch.cuda.memory_reserved()
    width = int(times_free * free / cells_wanted / 12_000)
    return dict(hidden=(width,), batch_size=898, epochs=1, lr=0.01, activation="relu")


def test_a_group_that_cannot_fit_the_card_runs_out_of_memory_as_torch_says(capped):
    data = load("digits", CUDA)
    st = validate(Study(name="oom", dataset="digits", base=too_wide(8, 1.8), seeds=8))
    with pytest.raises(torch.OutOfMemoryError) as caught:
        engine.train(cells(st), data, "mlp", CUDA)
    assert engine.is_oom(caught.value) and "test hook" not in str(caught.value)
    del caught


def test_a_group_that_cannot_fit_the_card_is_split_until_it_fits_and_every_cell_trains(
    tmp_path, capped
):
    # 8 cells need about 1.8x the memory under the cap, 4 cells 0.9x (may or may not fit), 2 cells
    # 0.45x
    st = validate(Study(name="oom", dataset="digits", base=too_wide(8, 1.8), seeds=8))
    progress = Warnings()
    summary = runner.run(st, RunOptions(tmp_path, CUDA, 8, progress=progress))
    assert summary.trained == 8 and summary.failed == [], progress.said
    assert re.fullmatch(
        r"a group of 8 cells ran out of cuda(:0)? memory; retrying as 4 \+ 4", progress.said[0]
    ), progress.said
    assert all("ran out of" in line for line in progress.said), progress.said
