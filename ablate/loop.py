"""The one training loop: a group of cells' epochs, sample order, flips, loss, evaluation and rows.

How a group computes its forward and its optimizer step is the group's own (the `Group`
protocol): `Plain` below is one cell's nn.Module with a torch.optim optimizer, the plain path;
fused.Stack and fused.Vmapped hold many cells as [G, ...] tensors. The loop treats them alike,
so a cell's sample order, flips, loss and rows are the same whichever way it trains.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

import torch
import torch.nn.functional as F

from . import graphs, models, optim, rng
from .data import hflip, to_float
from .sources import Data
from .study import Cell

# the weights' dtype per precision; bf16 keeps fp32 weights and runs the forward under autocast
DTYPES = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "bf16": torch.float32,
    "fp64": torch.float64,
}
EVAL_BATCH = 2000  # test-set chunk: bounds activation memory, large enough to keep a GPU busy
# on a CPU a smaller chunk keeps a group's activations in cache: 10 reference cells evaluated
# in 1.01-1.08 s at 500 against 1.19-1.26 s at 2000 (2 cores, 2026-12-05)
EVAL_BATCH_CPU = 500
# where train leaves each cell's final test predictions while an executor asks for them
# (keep_predictions); None for every other caller, whose rows and signatures stay as they are
_KEPT: ContextVar[dict | None] = ContextVar("kept_predictions", default=None)


@contextmanager
def keep_predictions(on: bool = True):
    """While open, train keeps each cell's argmax class per test example at its final epoch
    (cfg["epochs"]; none for a diverged cell): yields {cell id: int16 numpy [N]}, or None when
    off."""
    kept = {} if on else None
    token = _KEPT.set(kept)
    try:
        yield kept
    finally:
        _KEPT.reset(token)


class Group(Protocol):
    """How a group of cells computes its logits and applies its gradients."""

    batchnorm: bool  # the model has batchnorm: an epoch skips a last batch of one sample

    def forward(self, x: torch.Tensor, train: bool, step: int) -> torch.Tensor:
        """x [G or 1, B, C, H, W] -> logits [G, B, classes]; `step` numbers training forwards."""
        ...

    def step(self) -> None:
        """Apply the gradients the backward left on the parameters, then clear them (a group
        may step some parameters inside the backward: fused.SGDLinear)."""
        ...


class Plain:
    """One cell's model as a group of one: any nn.Module (a study's own model included), trained
    by the torch.optim optimizer its optim.Rule names. A study's own modules that draw from
    torch's global generator (nn.Dropout) draw from the cell's TORCH stream."""

    def __init__(self, cell: Cell, data: Data, model, device):
        torch.manual_seed(rng.key(cell.seed_for("dropout"), rng.TORCH))
        self.dtype = DTYPES[cell.config["precision"]]
        self.net = models.build(
            model,
            cell.config,
            data.shape,
            data.classes,
            cell.seed_for("init"),
            cell.seed_for("dropout"),
        )
        self.net = self.net.to(device, self.dtype)
        self.batchnorm = models.has_batchnorm(self.net)
        self.optimizer = optim.build(self.net.parameters(), cell.config)

    def forward(self, x: torch.Tensor, train: bool, step: int) -> torch.Tensor:
        self.net.train(train)
        return self.net(x[0].to(self.dtype))[None]

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def autocast(precision: str, device) -> torch.autocast:
    """bfloat16 for the forward matmuls under "bf16" (the loss stays fp32); a no-op otherwise."""
    return torch.autocast(
        torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"
    )


@contextmanager
def tf32(precision: str):
    """TF32 matmuls and convolutions under "tf32" only (engine.configure turns them off)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def epoch_order(seed, epoch: int, n: int, device) -> torch.Tensor:
    """The sample order in this epoch (1-based): a permutation of range(n), [G, n] for seeds
    [G, 1]."""
    return rng.permutation(rng.key(seed, rng.ORDER, epoch), n, device)


def epoch_flips(seed, epoch: int, n: int, device) -> torch.Tensor:
    """Whether the sample at each position of this epoch's order is mirrored (p 0.5)."""
    return rng.uniform24(rng.key(seed, rng.FLIP, epoch), n, device) < rng.threshold(0.5)


def epoch_end(n: int, batch_size: int, batchnorm: bool) -> int:
    """How many samples of an epoch's order train: all but a last batch of one sample when the
    model has batchnorm (nn.BatchNorm1d refuses one sample; its variance would be 0), alone or
    in a group alike; the order still permutes all n."""
    return n - 1 if batchnorm and n > 1 and n % batch_size == 1 else n


def criterion(
    logits: torch.Tensor, y: torch.Tensor, name: str, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy; "softmax_then_cross_entropy" first applies softmax, as one tutorial did by
    mistake (cross_entropy applies log-softmax itself), which flattens the gradients."""
    if name == "softmax_then_cross_entropy":
        logits = F.softmax(logits, dim=-1)
    return F.cross_entropy(logits, y, reduction=reduction)


def cell_losses(logits: torch.Tensor, y: torch.Tensor, name: str, reduction: str) -> torch.Tensor:
    """Each cell's loss over its batch, [G], as the mean or the sum. A group of one takes
    cross_entropy's own reduction, bitwise what a plain PyTorch loop computes; a larger group
    takes every sample's loss as flat rows (a faster kernel than [G, C, B]) and reduces per cell.
    The gradient is the same either way."""
    g, b, c = logits.shape
    if g == 1:
        return criterion(logits[0], y.reshape(b), name, reduction)[None]
    per_sample = criterion(logits.reshape(g * b, c), y.reshape(g * b), name, "none").view(g, b)
    return per_sample.mean(1) if reduction == "mean" else per_sample.sum(1)


def normalization(cfgs: list[dict], device) -> bool | torch.Tensor:
    """Which cells standardise their inputs: one bool when all cells agree, else a [G, 1, 1, 1, 1]
    mask, made once per group (not per step: a host-to-device copy each step would stall a GPU)."""
    norm = [c["normalize"] for c in cfgs]
    if all(norm) or not any(norm):
        return norm[0]
    return torch.tensor(norm, device=device).view(-1, 1, 1, 1, 1)


def take(source: torch.Tensor, idx: torch.Tensor, shape: tuple) -> torch.Tensor:
    """source[idx] as `shape` + a sample's shape, for an index of any layout: index_select on the
    flat index, 10x faster than advanced indexing on a CPU (8 against 80 us for 10 reference
    batches)."""
    return source.index_select(0, idx.reshape(-1)).view(*shape, *source.shape[1:])


def prepare(
    data: Data, raw: torch.Tensor, norm: bool | torch.Tensor, flips: torch.Tensor | None
) -> torch.Tensor:
    """uint8 [G, B, C, H, W] or features [G, B, *shape] (or [B, ...] shared by all cells) -> float
    [G or 1, B, ...]; each cell normalised where `norm` (from normalization) says, mirrored where
    `flips` [G, B] says."""
    dims = len(data.shape) + 2  # [G, B, *sample]: 5 for images
    if isinstance(norm, bool):
        x = to_float(data, raw, norm)
    else:  # the [G, 1, 1, 1, 1] mask as [G, 1, ...] for any sample shape (the same for images)
        mask = norm.view(-1, *[1] * (dims - 1))
        x = torch.where(mask, to_float(data, raw, True), to_float(data, raw, False))
    if flips is not None:
        x = hflip(x, flips)
    return x if x.dim() == dims else x[None]


@torch.no_grad()
def evaluate(
    group: Group,
    data: Data,
    cfgs: list[dict],
    norm: bool | torch.Tensor | None = None,
    predict: bool = False,
) -> tuple[list[float], list[float], torch.Tensor | None]:
    """Each cell's mean test loss and accuracy (a fraction) and, where `predict`, its argmax class
    per test example, int16 [G, N] on the CPU (one copy off the device, after the last chunk);
    normalisation may differ per cell (`norm`: normalization's answer, made once per group)."""
    cfg, dtype, device = cfgs[0], DTYPES[cfgs[0]["precision"]], data.test_x.device
    norm = normalization(cfgs, device) if norm is None else norm
    n = len(data.test_x)
    loss = torch.zeros(len(cfgs), device=device, dtype=dtype)
    correct = torch.zeros(len(cfgs), device=device, dtype=torch.int64)
    predicted = torch.empty(len(cfgs), n, device=device, dtype=torch.int16) if predict else None
    chunk = EVAL_BATCH_CPU if device.type == "cpu" else EVAL_BATCH
    for i in range(0, n, chunk):
        x = prepare(data, data.test_x[i : i + chunk], norm, None)
        with autocast(cfg["precision"], device):
            logits = group.forward(x, False, 0).to(dtype)
        y = data.test_y[i : i + chunk].expand(len(cfgs), -1)
        loss += cell_losses(logits, y, cfg["loss"], "sum")
        guess = logits.argmax(-1)  # the accuracy's own argmax: the two agree exactly
        correct += (guess == y).sum(1)
        if predicted is not None:
            predicted[:, i : i + chunk] = guess
    return (
        [total / n for total in loss.tolist()],
        [hits / n for hits in correct.tolist()],
        None if predicted is None else predicted.cpu(),
    )


def train(
    group: Group,
    cells: list[Cell],
    data: Data,
    device,
    on_epoch: Callable | None = None,
    trace: list | None = None,
) -> list[list[dict]]:
    """Train the group's cells together; rows per cell, a row per epoch. A cell stops at the first
    epoch whose train loss is not finite: that epoch's row is kept, every row of the cell says
    "diverged", and the others go on. `trace` collects each step's losses, a list per step; an
    open keep_predictions, each ok cell's test predictions at the last epoch."""
    cfg, cfgs = cells[0].config, [c.config for c in cells]
    with tf32(cfg["precision"]):
        return _epochs(group, cells, cfgs, data, torch.device(device), on_epoch, trace)


def _epochs(group, cells, cfgs, data, device, on_epoch, trace) -> list[list[dict]]:
    cfg = cfgs[0]
    batches = Batches(cells, data, group.batchnorm, device)
    step = Step(group, data, cfgs, batches, trace)
    full = graphs.Replayed(step.full) if graphs.wanted(group, device, trace) else step.full
    rows: list[list[dict]] = [[] for _ in cells]
    alive, first, kept = [True] * len(cells), 0, _KEPT.get()
    for epoch in range(1, cfg["epochs"] + 1):
        start = time.perf_counter()
        batches.draw(epoch)
        if hasattr(group, "begin_epoch"):  # fused.Stack hashes the epoch's dropout keys
            group.begin_epoch(first, batches.steps)
        step.begin()
        for _ in range(batches.full):
            full()
        if batches.tail:
            step.last()
        first += batches.steps
        train_loss = [t / batches.steps for t in step.total.tolist()]
        last = kept is not None and epoch == cfg["epochs"]
        test_loss, test_acc, predicted = evaluate(group, data, cfgs, step.norm, last)
        seconds = time.perf_counter() - start
        for j, cell in enumerate(cells):
            if alive[j]:
                alive[j] = _record(
                    rows[j], epoch, train_loss[j], test_loss[j], test_acc[j], seconds
                )
                if alive[j] and predicted is not None:
                    kept[cell.id] = predicted[j].numpy()
                if on_epoch:
                    on_epoch(cell, epoch, train_loss[j])
        if not any(alive):
            break
    return rows


class Batches:
    """An epoch's sample order, labels and flips for a group, [G, n] each, in buffers that keep
    their place on the device (a captured CUDA graph reads them), with every full batch's rows
    as a [steps, G, B] view: the step at index t takes its batch with one index_select."""

    def __init__(self, cells: list[Cell], data: Data, batchnorm: bool, device):
        cfg = cells[0].config
        # one host-to-device copy: the order's seeds and the flips', [G, 1] each
        seeds = [[c.seed_for("order"), c.seed_for("flip")] for c in cells]
        seeds = torch.tensor(seeds, device=device)
        self.order_seeds, self.flip_seeds = seeds[:, :1], seeds[:, 1:]
        self.data, self.device, self.size = data, device, cfg["batch_size"]
        self.n = min(cfg["train_subset"] or len(data.train_x), len(data.train_x))
        self.end = epoch_end(self.n, self.size, batchnorm)
        self.full, self.tail = divmod(self.end, self.size)
        self.steps = self.full + bool(self.tail)
        self.flip_on = torch.tensor([c.config["hflip"] for c in cells], device=device)[:, None]
        self.any_flip = any(c.config["hflip"] for c in cells)
        g = len(cells)
        self.order = torch.empty(g, self.n, dtype=torch.int64, device=device)
        self.labels = torch.empty(g, self.n, dtype=data.train_y.dtype, device=device)
        self.flips = torch.empty(g, self.n, dtype=torch.bool, device=device)

    def draw(self, epoch: int) -> None:
        """This epoch's order (and labels in that order) and flips, into the buffers."""
        self.order.copy_(epoch_order(self.order_seeds, epoch, self.n, self.device))
        torch.index_select(self.data.train_y, 0, self.order.view(-1), out=self.labels.view(-1))
        if self.any_flip:
            flips = epoch_flips(self.flip_seeds, epoch, self.n, self.device)
            torch.logical_and(flips, self.flip_on, out=self.flips)

    def steps_view(self, buffer: torch.Tensor) -> torch.Tensor:
        """The full batches' part of a [G, n] buffer as [full, G, B] (a view)."""
        g, b = len(buffer), self.size
        return buffer[:, : self.full * b].view(g, self.full, b).transpose(0, 1)

    def last(self, buffer: torch.Tensor) -> torch.Tensor:
        """The last, shorter batch's part of a buffer, [1, G, tail]."""
        return buffer[None, :, self.full * self.size : self.end]


class Step:
    """One training step of a group, at the epoch's step index `t` (a [1] tensor on the
    device, counted there): its batch, forward, loss, backward and optimizer step, and the
    epoch's summed losses, with no host sync."""

    def __init__(self, group, data: Data, cfgs: list[dict], batches: Batches, trace):
        device = batches.device
        self.group, self.data, self.batches, self.trace = group, data, batches, trace
        self.cfg = cfgs[0]
        self.dtype = DTYPES[self.cfg["precision"]]
        self.norm = normalization(cfgs, device)
        self.t = torch.zeros(1, dtype=torch.int64, device=device)
        self.total = torch.zeros(len(cfgs), device=device, dtype=self.dtype)
        self.ones = torch.ones(len(cfgs), device=device, dtype=self.dtype)
        buffers = [batches.order, batches.labels, *[batches.flips][: batches.any_flip]]
        self.views = [batches.steps_view(b) for b in buffers]

    def begin(self) -> None:
        self.t.zero_()
        self.total.zero_()

    def full(self) -> None:
        """A full batch, the one at index t."""
        idx, y, *flips = (v.index_select(0, self.t) for v in self.views)
        self.run(idx, y, flips[0] if flips else None)

    def last(self) -> None:
        """The epoch's last, shorter batch."""
        b = self.batches
        parts = [b.last(buffer) for buffer in (b.order, b.labels, b.flips)]
        self.run(parts[0], parts[1], parts[2] if b.any_flip else None)

    def run(self, idx: torch.Tensor, y: torch.Tensor, flips: torch.Tensor | None) -> None:
        """Train on the batch idx [1, G, B] (labels y, flips like idx)."""
        g, b = idx.shape[1:]
        flips = None if flips is None else flips.view(g, b)
        x = prepare(self.data, take(self.data.train_x, idx, (g, b)), self.norm, flips)
        with autocast(self.cfg["precision"], x.device):
            logits = self.group.forward(x, True, self.t)
        loss = cell_losses(logits.to(self.dtype), y, self.cfg["loss"], "mean")
        loss.backward(self.ones)  # cells are independent: each gets the gradient of its own loss
        self.group.step()
        with torch.no_grad():
            self.total.add_(loss)  # summed on the device: one sync per epoch, not per step
            self.t.add_(1)
        if self.trace is not None:
            self.trace.append(loss.tolist())


def _record(rows: list[dict], epoch, train_loss, test_loss, test_acc, seconds) -> bool:
    """Append the epoch's row; False, and every row "diverged", when the train loss is not
    finite."""
    ok = math.isfinite(train_loss)
    rows.append(
        dict(
            epoch=epoch,
            train_loss=train_loss,
            test_loss=test_loss,
            test_acc=test_acc,
            seconds=seconds,
            status="ok" if ok else "diverged",
        )
    )
    if not ok:
        for row in rows:
            row["status"] = "diverged"
    return ok
