"""Fused groups: a cell in a group of 1, 3 or 8 equals itself alone; per-cell hyperparameters."""

import math

import pytest
import torch

from ablate import engine, fused, loop, optim
from ablate.data import load
from ablate.sources import Data
from ablate.study import Study, cells, validate
from helpers import (
    BASE,
    VARIANTS,
    branchy,
    cnn_group,
    group,
    own_group,
    products_dtypes,
    residual,
    small_cnn,
)


def in_groups(cs, data, size):
    rows = []
    for i in range(0, len(cs), size):
        rows += engine.train(cs[i : i + size], data, "mlp", "cpu")
    return rows


# Tolerances: in fp64 the fused and plain paths differ only in the order of float sums
# (bmm vs mm); after 100 steps we measured <= 5e-16 relative, so 1e-10 leaves room for
# other BLAS builds. In fp32 SGD we measured 1.4e-7 and allow 1e-4. Adam divides by
# sqrt(v), tiny early on, so fp32 rounding grows: 1.5e-4 on the test loss and 2 test
# samples after 100 steps; it is checked in fp64, where the maths is shown to match.
CASES = [("fp64", v) for v in VARIANTS] + [
    ("fp32", v) for v in VARIANTS if not v.startswith("adam")
]


@pytest.mark.parametrize("precision, variant", CASES)
@pytest.mark.slow
def test_a_cell_is_itself_in_groups_of_1_3_and_8(data_dir, precision, variant):
    rel = 1e-10 if precision == "fp64" else 1e-4
    data = load("mnist", "cpu", data_dir)
    cs = group(precision, VARIANTS[variant])
    assert len(cs) == 8
    alone, threes, eight = (in_groups(cs, data, n) for n in (1, 3, 8))
    for a, b, c in zip(alone, threes, eight, strict=True):
        for key in ("train_loss", "test_loss"):
            assert math.isclose(a[0][key], b[0][key], rel_tol=rel), (key, a[0][key], b[0][key])
            assert math.isclose(a[0][key], c[0][key], rel_tol=rel), (key, a[0][key], c[0][key])
        assert abs(a[0]["test_acc"] - c[0]["test_acc"]) <= 1 / 10000  # within one test sample
        assert abs(a[0]["test_acc"] - b[0]["test_acc"]) <= 1 / 10000


@pytest.mark.parametrize(
    "momenta, decays",
    [([0.0], [0.0]), ([0.0], [0.0, 1e-3]), ([0.9], [0.0, 1e-3]), ([0.0, 0.9], [0.0, 1e-3])],
    ids=["plain", "no momentum", "one momentum", "mixed momenta"],
)
@pytest.mark.slow
def test_sgd_steps_taken_in_the_backward_equal_torch_optim_sgd_for_any_momentum(
    data_dir, monkeypatch, momenta, decays
):
    """The weights' SGD step runs in the backward (fused.SGDLinear): a GEMM into the weights
    with no momentum, into the momentum buffer with one, a scaled buffer when the cells'
    momenta differ; each cell equals itself trained alone by torch.optim.SGD."""
    data = load("mnist", "cpu", data_dir)
    base = {**BASE, "precision": "fp64", "train_subset": 2000, "epochs": 2}
    base |= {"momentum": momenta[0], "weight_decay": decays[0]}
    factors = dict(lr=[0.05, 0.1])
    for key, levels in (("momentum", momenta), ("weight_decay", decays)):
        if len(levels) > 1:
            factors[key] = levels
    cs = cells(validate(Study(name="t", dataset="mnist", base=base, factors=factors, seeds=1)))
    calls = []
    taken = fused.Optimizer.step_with_product
    monkeypatch.setattr(
        fused.Optimizer, "step_with_product", lambda *args: calls.append(1) or taken(*args)
    )
    alone, together = in_groups(cs, data, 1), fused.train(cs, data, "cpu")
    assert len(calls) == 2 * 40 * 3  # epochs x steps (2,000 / 50) x layers: all in the backward
    for cell, a, b in zip(cs, alone, together, strict=True):
        for key in ("train_loss", "test_loss"):
            got, want = [r[key] for r in b], [r[key] for r in a]
            assert got == pytest.approx(want, rel=1e-10), (cell.config["momentum"], key, got, want)


@pytest.mark.slow
def test_a_group_repeats_bitwise_in_deterministic_mode(data_dir):
    data = load("mnist", "cpu", data_dir)
    engine.configure(deterministic=True)
    try:
        cs = group("fp32", VARIANTS["dropout+flip+norm+bn"])

        def strip(rows):
            return [[{k: v for k, v in r.items() if k != "seconds"} for r in c] for c in rows]

        assert strip(fused.train(cs, data, "cpu")) == strip(fused.train(cs, data, "cpu"))
    finally:
        engine.configure(deterministic=False)


def test_a_diverging_cell_stops_inside_its_group_and_the_others_go_on(data_dir):
    data = load("mnist", "cpu", data_dir)
    st = validate(
        Study(
            name="t",
            dataset="mnist",
            base={**BASE, "epochs": 3, "train_subset": 1000},
            factors=dict(lr=[0.05, 1e30]),
            seeds=1,
        )
    )
    cs = cells(st)
    rows = fused.train(cs, data, "cpu")
    assert [r["status"] for r in rows[0]] == ["ok"] * 3
    assert len(rows[1]) < 3 and all(r["status"] == "diverged" for r in rows[1])
    alone = engine.train_cell(cs[0], data, "mlp", "cpu")
    assert [r["train_loss"] for r in rows[0]] == pytest.approx(
        [r["train_loss"] for r in alone], rel=1e-5
    )


def test_cells_of_another_shape_or_a_study_model_do_not_fuse():
    cs = group("fp32", {})
    assert fused.can_fuse(cs, "mlp")
    other = validate(Study(name="t", dataset="mnist", base={**BASE, "hidden": (16,)}, seeds=1))
    assert not fused.can_fuse(cs + cells(other), "mlp")
    assert not fused.can_fuse(cs, lambda cfg: torch.nn.Linear(784, 10))


@pytest.mark.slow
def test_tf32_is_fp32_on_a_cpu_and_leaves_the_flags_as_it_found_them(data_dir):
    data = load("mnist", "cpu", data_dir)
    engine.configure(deterministic=False)
    fp32, tf32 = (
        in_groups(group(p, VARIANTS["dropout+flip+norm+bn"]), data, 8) for p in ("fp32", "tf32")
    )
    assert fp32 == [
        [{**r, "seconds": a["seconds"]} for r, a in zip(t, f, strict=True)]
        for t, f in zip(tf32, fp32, strict=True)
    ]  # a CPU has no TF32 units: bitwise equal
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("variant", ["sgd", "dropout+flip+norm+bn"])
@pytest.mark.slow
def test_bf16_autocasts_the_forward_and_stays_close_to_fp32(data_dir, variant):
    data = load("mnist", "cpu", data_dir)
    bf16 = group("bf16", VARIANTS[variant])
    alone, eight = in_groups(bf16, data, 1), in_groups(bf16, data, 8)
    fp32 = in_groups(group("fp32", VARIANTS[variant]), data, 8)
    for a, c, f in zip(alone, eight, fp32, strict=True):
        # bf16 keeps 8 mantissa bits (a relative step of 2**-8 = 0.4%), and the two paths round at
        # different points (nn.BatchNorm1d returns bf16; the fused batchnorm stays fp32 until the
        # next matmul), so after 100 steps they differ by up to 2.6e-3 (measured); fp32 is ~1e-3
        # away
        assert a[0]["train_loss"] != f[0]["train_loss"]
        # (on the conftest stand-ins, where no MNIST files are, 1.2e-2 alone against in a group)
        assert math.isclose(a[0]["train_loss"], c[0]["train_loss"], rel_tol=2e-2)
        assert math.isclose(c[0]["train_loss"], f[0]["train_loss"], rel_tol=2e-2)
        # early in training, where accuracy moves fast: 0.52 points measured on MNIST, 1.68 on
        # the conftest stand-ins (1.04 before the fused batchnorm took the centred mean square)
        gap = abs(c[0]["test_acc"] - f[0]["test_acc"])
        assert gap <= 0.025, f"bf16 {c[0]['test_acc']:.4f} vs fp32 {f[0]['test_acc']:.4f}"
    assert products_dtypes(bf16, data) == {torch.bfloat16}


@pytest.mark.parametrize("subset", [320, 321], ids=["even", "a-last-batch-of-one"])
@pytest.mark.slow
def test_cells_differing_in_activation_and_batchnorm_are_themselves_in_one_wide_group(subset):
    # the group a GPU forms (fused.SELECTED_KEYS), trained here on the CPU in fp64: every cell
    # selects its activation and its batchnorm; 321 samples end an epoch in a batch of one,
    # which the batchnorm cells skip, so the group trains as two
    data = load("digits", "cpu")
    base = dict(hidden=(24, 16), dropout=0.3, hflip=True, lr=0.05, momentum=0.5, batch_size=32)
    base = {**base, "epochs": 2, "train_subset": subset, "precision": "fp64"}
    factors = dict(activation=["sigmoid", "relu", "tanh"], batchnorm=[False, True])
    cs = cells(validate(Study(name="t", dataset="digits", base=base, factors=factors, seeds=2)))
    assert fused.can_fuse(cs, "mlp", "cuda") and not fused.can_fuse(cs, "mlp", "cpu")
    together = fused.train(cs, data, "cpu")
    for cell, rows in zip(cs, together, strict=True):
        alone = engine.train_cell(cell, data, "mlp", "cpu")
        for key in ("train_loss", "test_loss"):
            assert math.isclose(alone[-1][key], rows[-1][key], rel_tol=1e-10), (
                cell.levels,
                key,
                alone[-1][key],
                rows[-1][key],
            )
        assert alone[-1]["test_acc"] == rows[-1]["test_acc"]
    assert len({r[-1]["train_loss"] for r in together}) == len(cs)


# The vmapped path (any built-in model; grouped convolutions) against each cell alone, with
# batchnorm, dropout2d, dropout, flips and per-cell normalisation and weight decay. Measured
# after 20 steps: fp64 SGD 3.9e-16, fp64 Adam 2.5e-10 (Adam's 1/sqrt(v) amplifies rounding),
# fp32 SGD 1.3e-7 relative on MNIST and 1.5e-4 on the conftest stand-ins (near chance after 20
# steps there; not traced further): fp64 is the check that the maths match.
@pytest.mark.parametrize(
    "precision, optimizer, rel",
    [("fp64", "sgd", 1e-12), ("fp64", "adam", 1e-8), ("fp32", "sgd", 1e-3)],
)
@pytest.mark.slow
def test_a_cnn_cell_is_itself_in_a_vmapped_group(data_dir, precision, optimizer, rel):
    data = load("mnist", "cpu", data_dir)
    cs = cnn_group(precision, optimizer)
    assert not fused.can_fuse(cs, "cnn", "cpu") and fused.can_fuse(
        cs, "cnn", "cuda"
    )  # CPUs keep the plain path
    group = fused.train(cs, data, "cpu", model="cnn")
    for cell, rows in zip(cs, group, strict=True):
        alone = engine.train_cell(cell, data, "cnn", "cpu")
        for key in ("train_loss", "test_loss"):
            assert math.isclose(alone[0][key], rows[0][key], rel_tol=rel), (
                key,
                alone[0][key],
                rows[0][key],
            )
        # fp32 rounding flips near-tied argmaxes: 6 of 10,000 measured at 30% accuracy after 20
        # steps
        assert (
            abs(alone[0]["test_acc"] - rows[0]["test_acc"])
            <= (1 if precision == "fp64" else 10) / 10000
        )
    assert len({r[0]["train_loss"] for r in group}) == 4  # four different cells, not one copied


# digits has 898 training images = 3 x 299 + 1: nn.BatchNorm1d refuses the last batch of one
# sample, so both paths drop it when the model has batchnorm (and keep it without). Measured
# after 6 steps: 2e-16 relative in fp64, 6e-8 in fp32; the tolerances are the ones above.
@pytest.mark.parametrize("precision, rel", [("fp64", 1e-10), ("fp32", 1e-4)])
def test_a_batchnorm_cell_whose_last_batch_is_one_sample_trains_alike_alone_and_in_a_group(
    precision, rel
):
    data = load("digits")
    base = dict(hidden=(32,), batchnorm=True, batch_size=299, epochs=2, lr=0.1, precision=precision)
    cs = cells(validate(Study(name="t", dataset="digits", base=base, seeds=2)))
    trace = []
    engine.train_cell(cs[0], data, "mlp", "cpu", trace=trace)
    assert len(trace) == 2 * 3  # 897 of the 898 images an epoch
    alone, group = engine.train(cs[:1], data, "mlp", "cpu"), fused.train(cs, data, "cpu")
    for a, b in zip(alone[0], group[0], strict=True):
        for key in ("train_loss", "test_loss"):
            assert math.isclose(a[key], b[key], rel_tol=rel), (key, a[key], b[key])
        assert abs(a["test_acc"] - b["test_acc"]) <= 1 / 899  # within one test sample
    plain = cells(
        validate(Study(name="t", dataset="digits", base={**base, "batchnorm": False}, seeds=1))
    )
    trace = []
    engine.train_cell(plain[0], data, "mlp", "cpu", trace=trace)
    assert len(trace) == 2 * 4  # without batchnorm the sample alone in its batch still trains


def with_dropout(config):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10), torch.nn.Dropout(0.5))


# measured after 20 steps: up to 1.1e-15 relative (MLP-like) and 3.0e-16 (CNN-like): the order
# of float sums in the batched ops
@pytest.mark.parametrize("model", [residual, small_cnn], ids=["mlp-like", "cnn-like"])
@pytest.mark.slow
def test_a_study_model_cell_is_itself_in_vmapped_groups_of_1_3_and_8(model):
    data = load("digits")
    cs = own_group(model)
    assert len(cs) == 8 and fused.vmap_problem(model, cs[0], data.shape, data.classes) is None
    alone = [engine.train_cell(cell, data, model, "cpu")[-1] for cell in cs]
    for size in (1, 3, 8):
        rows = [
            r[-1]
            for i in range(0, 8, size)
            for r in fused.train(cs[i : i + size], data, "cpu", model=model)
        ]
        for a, b in zip(alone, rows, strict=True):
            for key in ("train_loss", "test_loss"):
                assert math.isclose(a[key], b[key], rel_tol=1e-12), (size, key, a[key], b[key])
            assert a["test_acc"] == b["test_acc"]
    assert len({r["train_loss"] for r in alone}) == 8  # eight cells, not one copied


def test_a_study_model_vmap_cannot_take_is_named_with_its_reason(monkeypatch):
    data = load("digits")
    problem = {
        m.__name__: fused.vmap_problem(m, own_group(m)[0], data.shape, data.classes)
        for m in (with_dropout, branchy, residual)
    }
    assert "random operation" in problem["with_dropout"], problem
    assert "data-dependent control flow" in problem["branchy"], problem
    assert problem["residual"] is None
    # where the device would fuse it (a GPU), such a model's group trains cell by cell instead
    monkeypatch.setattr(fused, "can_fuse", lambda cells, model, device="cpu": True)
    cs = own_group(branchy)[:3]
    rows = engine.train(cs, data, branchy, "cpu")
    alone = [engine.train_cell(cell, data, branchy, "cpu") for cell in cs]

    def strip(rows):
        return [[{k: v for k, v in r.items() if k != "seconds"} for r in c] for c in rows]

    assert strip(rows) == strip(alone)


def tiny_data(n_train=40, n_test=8, classes=3, shape=(1, 5, 5)) -> Data:
    """Random images and labels from a fixed generator: no files, and each step takes a
    millisecond."""
    gen = torch.Generator().manual_seed(0)

    def images(n):
        return torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)

    def labels(n):
        return torch.randint(0, classes, (n,), generator=gen)

    mean, std = torch.tensor([0.5]), torch.tensor([0.3])
    train_x, train_y, test_x, test_y = images(n_train), labels(n_train), images(n_test), labels(8)
    return Data("tiny", train_x, train_y, test_x, test_y, mean, std, classes, "generated")


def cell_weights(group, j: int) -> list[torch.Tensor]:
    """Cell j's parameters in a fused group, as its nn.Module alone holds them (Stack's weights
    are stored transposed, its biases as [1, out])."""
    if isinstance(group, fused.Stack):
        return [w[j].T for w in group.w] + [b[j, 0] for b in group.b]
    return [v[j] for v in group.weights.values()]


def plain_weights(net: torch.nn.Module, model: str) -> list[torch.Tensor]:
    if model == "mlp":
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        return [m.weight for m in linears] + [m.bias for m in linears]
    return list(net.parameters())


# Every optimizer name, fused (an MLP as Stack, with SGD's step in the backward; a CNN with
# batchnorm through vmap) against torch.optim on each cell alone, in fp64, after 6 steps of
# 16 on generated data. Cells differ in lr, momentum (0 or not: sgd_nesterov at 0 is plain SGD)
# and weight decay. Measured: <= 3e-13 relative for any weight with SGD, 6e-13 with Adam, so
# 1e-10 leaves room for other BLAS builds. (A bias just before a batchnorm has a gradient of
# rounding noise alone, which Adam scales to full steps: 3e-8 apart; no such bias here.)
@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("name", list(optim.RULES))
def test_every_optimizer_gives_each_cell_in_a_group_the_weights_torch_optim_gives_it(name, model):
    data = tiny_data()
    layers = ("conv:3:3", "act", "batchnorm", "flatten", "fc:6", "act")
    base = dict(hidden=(6, 5), layers=layers, optimizer=name, batch_size=16, epochs=2)
    base |= dict(lr=0.05, momentum=0.9, weight_decay=0.1, precision="fp64", train_subset=40)
    factors = dict(lr=[0.05, 0.02], momentum=[0.9, 0.0], weight_decay=[0.1, 0.0])
    study = Study(name="t", dataset="digits", model=model, base=base, factors=factors, seeds=1)
    cs = cells(validate(study))
    group = fused.group(cs, data, "cpu", model)
    loop.train(group, cs, data, "cpu")
    assert isinstance(group.optimizer.rule, optim.Rule) and len(cs) == 8
    for j, cell in enumerate(cs):
        alone = loop.Plain(cell, data, model, "cpu")
        assert type(alone.optimizer) is optim.RULES[name].torch
        loop.train(alone, [cell], data, "cpu")
        want = plain_weights(alone.net, model)
        got = cell_weights(group, j)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w.detach(), rtol=1e-10, atol=1e-12, msg=str(cell.levels))
    firsts = {cell_weights(group, j)[0].sum().item() for j in range(len(cs))}
    assert len(firsts) >= 4  # trained apart, not one copied (Adam's take no momentum: 4 of 8)
