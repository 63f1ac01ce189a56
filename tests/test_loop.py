"""The training loop: a fixed number of host syncs per epoch, and each random stream drawn apart."""

from collections import Counter
from dataclasses import replace

import pytest
import torch

from ablate import fused, loop
from ablate.data import load
from ablate.study import STREAMS, Cell, Study, cell_id, cells, validate

# each of these waits for the device to finish (a GPU sync) or copies a tensor to the host
SYNCS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")
CNN = ("conv:6:3", "batchnorm", "maxpool:2", "act", "dropout2d:0.3", "flatten", "fc:32", "act")
# (model, base, factors besides lr, per epoch: calls beyond the rows' three tolist)
VARIANTS = {
    "sgd": ("mlp", {}, {}, {}),
    "adam+dropout+flip+norm+bn": (
        "mlp",
        dict(optimizer="adam", lr=0.002, dropout=0.3, hflip=True, normalize=True, batchnorm=True),
        {},
        {},
    ),
    # the cells' normalisation mask is built once per group and reused by every evaluation
    "mixed normalisation": ("mlp", {}, dict(normalize=[False, True]), {}),
    # the vmapped path (GPUs only in a study; it runs on the CPU here) with its own dropouts
    "vmapped cnn": ("cnn", dict(layers=CNN, optimizer="adam", lr=0.002, hflip=True), {}, {}),
}


def counted(monkeypatch) -> dict:
    """Count the calls of each sync method of torch.Tensor, and of torch.tensor (a tensor built
    from Python values: a host-to-device copy on a GPU)."""
    calls = dict.fromkeys([*SYNCS, "torch.tensor"], 0)

    def wrap(name, original):
        def counting(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        return counting

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "tensor", wrap("torch.tensor", torch.tensor))
    return calls


def syncs(monkeypatch, variant, epochs, steps, eval_batch=loop.EVAL_BATCH_CPU) -> Counter:
    """The calls made while loop.train runs a fused group of 3 digits cells (batch 32) for
    `epochs` epochs of `steps` steps, the group built beforehand."""
    model, extra, more, _ = VARIANTS[variant]
    base = dict(hidden=(16,), lr=0.05, batch_size=32, epochs=epochs, train_subset=32 * steps)
    base = {**base, **extra}
    factors = dict(lr=[base["lr"], 2 * base["lr"]], **more)
    st = validate(
        Study(name="t", dataset="digits", model=model, base=base, factors=factors, seeds=[0, 1])
    )
    cs, data = cells(st)[:3], load("digits")
    group = fused.group(cs, data, "cpu", model)
    monkeypatch.setattr(loop, "EVAL_BATCH_CPU", eval_batch)
    with monkeypatch.context() as patch:
        calls = counted(patch)
        rows = loop.train(group, cs, data, "cpu")
    assert [len(r) for r in rows] == [epochs] * 3
    return +Counter(calls)  # the methods called at all


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_epoch_of_a_fused_group_syncs_a_fixed_number_of_times_whatever_its_steps(
    monkeypatch, variant
):
    one = syncs(monkeypatch, variant, epochs=1, steps=5)
    assert syncs(monkeypatch, variant, epochs=1, steps=20) == one, "a call per step"
    two = syncs(monkeypatch, variant, epochs=2, steps=5)
    per_epoch = two - one
    # one tolist for the train losses, two for the evaluation's losses and hits: the rows
    assert per_epoch == {"tolist": 3, **VARIANTS[variant][3]}, (one, two)
    # before the first epoch: the seeds, the cells' flip flags, a mixed normalisation mask
    assert one - per_epoch == {"torch.tensor": 2 + bool(VARIANTS[variant][2])}, one


def test_the_evaluation_syncs_once_per_epoch_whatever_its_chunks(monkeypatch):
    # digits' 899 test images in 2 chunks of 500 against 9 chunks of 100
    whole = syncs(monkeypatch, "sgd", epochs=1, steps=5)
    assert syncs(monkeypatch, "sgd", epochs=1, steps=5, eval_batch=100) == whole


def test_the_counter_sees_each_kind_of_sync(monkeypatch):
    t = torch.ones(2)
    with monkeypatch.context() as patch:
        calls = counted(patch)
        bool(t[0]), float(t[0]), int(t[0]), t.tolist(), t[0].item(), t.cpu(), t.numpy()
        torch.tensor([1.0])
    assert +Counter(calls) == dict.fromkeys(
        ["__bool__", "__float__", "__int__", "tolist", "item", "cpu", "numpy", "torch.tensor"], 1
    )


def test_a_cell_holding_streams_fixed_draws_anew_only_from_the_stream_it_varies(data_dir):
    # two cells of seeds 1 and 2 with every stream but one held at seed 0: their init, sample
    # order, flips and dropout masks are bitwise equal except the varied stream's
    data = load("mnist", "cpu", data_dir)
    base = dict(hidden=(16,), dropout=0.5, hflip=True, epochs=1, train_subset=64, batch_size=32)
    (cell,) = cells(validate(Study(name="s", dataset="mnist", base=base, seeds=1)))
    for varied in STREAMS:
        held = {stream: 0 for stream in STREAMS if stream != varied}
        pair = [replace(cell, seed=seed, fixed=held) for seed in (1, 2)]
        group = fused.group(pair, data, "cpu")

        def same(draw, stream, pair=pair):
            a, b = (draw(torch.tensor([[c.seed_for(stream)]])) for c in pair)
            return torch.equal(a, b)

        drawn = {
            "init": all(torch.equal(w[0], w[1]) for w in group.w),
            "order": same(lambda s: loop.epoch_order(s, 1, 64, "cpu"), "order"),
            "flip": same(lambda s: loop.epoch_flips(s, 1, 64, "cpu"), "flip"),
            "dropout": torch.equal(group.layer_keys[0], group.layer_keys[1]),
        }
        assert drawn == {stream: stream != varied for stream in STREAMS}, (varied, drawn)


def test_only_a_cell_holding_streams_fixed_has_them_in_its_id():
    config = validate(Study(name="s", dataset="digits")).base
    plain = cell_id("digits", "mlp", config, 3)
    assert cell_id("digits", "mlp", config, 3, fixed={}) == plain
    assert cell_id("digits", "mlp", config, 3, fixed={"order": 0}) != plain
    assert Cell(plain, 3, {}, config).seed_for("order") == 3
    assert Cell(plain, 3, {}, config, fixed={"order": 0}).seed_for("order") == 0
