"""Training and evaluation of a group of cells on one device; each cell's numbers come from its seed alone."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from . import fused, models, rng, testhooks
from .data import Data, hflip, to_float
from .study import AblateError, Cell, StudyError

EVAL_BATCH = 2000  # test-set chunk: bounds activation memory, large enough to keep a GPU busy


def parse_device(name: str) -> torch.device | None:
    """ "auto" (None), "cpu", "cuda" or "cuda:N"; anything else is a user error."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise AblateError(
            f"--device {name}: not a device ablate trains on; try auto, cpu, cuda or cuda:N"
        )
    return device


def pick_device(name: str = "auto") -> torch.device:
    """The device named, or for "auto" the GPU where there is one; a GPU this machine lacks is a user error."""
    if (device := parse_device(name)) is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        have = f"{torch.cuda.device_count()} GPUs" if torch.cuda.is_available() else "no GPU"
        raise AblateError(f"--device {name}: this machine has {have}; try --device auto or cpu")
    return device


def configure(deterministic: bool) -> None:
    """fp32 everywhere (no TF32), and with `deterministic` the algorithms that repeat bitwise."""
    os.environ.setdefault(
        "CUBLAS_WORKSPACE_CONFIG", ":4096:8"
    )  # cuBLAS needs it to be deterministic
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic)


def optimizer(net: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return torch.optim.SGD(
        net.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
    )


def epoch_order(seed: int, epoch: int, n: int, device) -> torch.Tensor:
    """The cell's sample order in this epoch (1-based): a permutation of range(n)."""
    return rng.permutation(rng.key(seed, rng.ORDER, epoch), n, device)


def epoch_flips(seed: int, epoch: int, n: int, device) -> torch.Tensor:
    """Whether the sample at each position of this epoch's order is mirrored (p 0.5)."""
    return rng.uniform24(rng.key(seed, rng.FLIP, epoch), n, device) < rng.threshold(0.5)


def criterion(
    logits: torch.Tensor, y: torch.Tensor, name: str, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy; "softmax_then_cross_entropy" first applies softmax, as one tutorial did by
    mistake (cross_entropy applies log-softmax itself), which flattens the gradients."""
    if name == "softmax_then_cross_entropy":
        logits = F.softmax(logits, dim=1)
    return F.cross_entropy(logits, y, reduction=reduction)


@torch.no_grad()
def evaluate(
    net: torch.nn.Module,
    data: Data,
    normalize: bool,
    dtype=torch.float32,
    loss_name: str = "cross_entropy",
    precision: str = "fp32",
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) on the whole test set."""
    net.eval()
    loss = torch.zeros((), device=data.test_x.device, dtype=dtype)
    correct = torch.zeros((), dtype=torch.int64, device=data.test_x.device)
    for i in range(0, len(data.test_x), EVAL_BATCH):
        with fused.autocast(precision, data.test_x.device):
            logits = net(to_float(data, data.test_x[i : i + EVAL_BATCH], normalize).to(dtype)).to(
                dtype
            )
        y = data.test_y[i : i + EVAL_BATCH]
        loss += criterion(logits, y, loss_name, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = len(data.test_x)
    return loss.item() / n, correct.item() / n


def train_cell(
    cell: Cell,
    data: Data,
    model,
    device,
    on_epoch: Callable | None = None,
    trace: list | None = None,
) -> list[dict]:
    """Train one cell; a row per epoch. Stops at the first epoch whose train loss is not finite
    (that epoch's row is kept and every row says "diverged"). `trace` collects per-step losses."""
    cfg, seed = cell.config, cell.seed
    torch.manual_seed(rng.key(seed, rng.TORCH))  # a study's own modules (nn.Dropout) draw from here
    dtype = fused.DTYPES[cfg["precision"]]
    net = models.build(model, cfg, data.shape, data.classes, seed).to(device, dtype)
    opt = optimizer(net, cfg)
    n = min(cfg["train_subset"] or len(data.train_x), len(data.train_x))
    xs, ys, bs = data.train_x[:n], data.train_y[:n], cfg["batch_size"]
    end = fused.epoch_end(n, bs, models.has_batchnorm(net))
    steps = math.ceil(end / bs)
    rows = []
    for epoch in range(1, cfg["epochs"] + 1):
        start = time.perf_counter()
        net.train()
        order = epoch_order(seed, epoch, n, device)
        flips = epoch_flips(seed, epoch, n, device) if cfg["hflip"] else None
        total = torch.zeros((), device=device, dtype=dtype)
        for s in range(0, end, bs):
            idx = order[s : s + bs]
            x = to_float(data, xs[idx], cfg["normalize"]).to(dtype)
            if flips is not None:
                x = hflip(x, flips[s : s + bs])
            with fused.autocast(cfg["precision"], device):
                logits = net(x)
            loss = criterion(logits.to(dtype), ys[idx], cfg["loss"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()  # summed on the device: one sync per epoch, not per step
            if trace is not None:
                trace.append(loss.item())
        train_loss = total.item() / steps
        test_loss, test_acc = evaluate(
            net, data, cfg["normalize"], dtype, cfg["loss"], cfg["precision"]
        )
        ok = math.isfinite(train_loss)
        rows.append(
            dict(
                epoch=epoch,
                train_loss=train_loss,
                test_loss=test_loss,
                test_acc=test_acc,
                seconds=time.perf_counter() - start,
                status="ok" if ok else "diverged",
            )
        )
        if on_epoch:
            on_epoch(cell, epoch, train_loss)
        if not ok:
            for r in rows:
                r["status"] = "diverged"
            break
    return rows


def auto_group(cells: list[Cell], data: Data, device: torch.device, model="mlp") -> int:
    """The default --max-group: on a GPU, what fits in half the free memory (parameters with
    gradient and two optimizer states, activations of a batch and of an eval chunk kept for the
    backward, the epoch's order); on a CPU 8, past which fusing gains little on 2 cores
    (benchmarks/). A study's own model trains cell by cell, so its group size matters little."""
    if device.type != "cuda" or not cells or not isinstance(model, str):
        return 8
    cfg = cells[0].config
    net = models.build(model, cfg, data.shape, data.classes, 0)
    params = sum(p.numel() for p in net.parameters())
    sizes = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: sizes.append(o.numel()))
        for m in net.modules()
        if not list(m.children())
    ]
    with torch.no_grad():
        net.eval()(torch.zeros(1, *data.shape))
    for h in hooks:
        h.remove()
    acts = (cfg["batch_size"] + EVAL_BATCH) * (
        sum(sizes) * 2 + math.prod(data.shape)
    )  # output and its grad
    per_cell = 4 * params * 4 + acts * 4 + len(data.train_x) * 8 * 2
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(1024, free // 2 // per_cell))


class GroupFailed(Exception):
    """A group failed for a reason of its own (not out of memory): it is recorded, never retried."""


def is_oom(exc: BaseException) -> bool:
    """Out of memory: CUDA's torch.OutOfMemoryError, or on a CPU the allocator's plain RuntimeError
    ("DefaultCPUAllocator: can't allocate memory") or Python's MemoryError."""
    cpu = isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(exc)
    return cpu or isinstance(exc, (torch.OutOfMemoryError, MemoryError))


def train(
    group: list[Cell],
    data: Data,
    model,
    device,
    on_epoch: Callable | None = None,
    source: str = "study",
) -> list[list[dict]]:
    """Train a group of cells that share their shapes; rows per cell, in the group's order.
    A group of one, or a study's own model, takes the plain per-cell path. A failure inside a
    study's model callable becomes a StudyError naming `source`, the study file. Any out of
    memory (is_oom) is raised as torch.OutOfMemoryError, which the runner splits on."""
    if testhooks.too_large(len(group)):
        raise torch.OutOfMemoryError(f"test hook: a group of {len(group)} cells")
    try:
        with fused.tf32(group[0].config["precision"]):
            if len(group) > 1 and fused.can_fuse(group, model, device):
                return fused.train(group, data, device, on_epoch, model)
            return _plain(group, data, model, device, on_epoch, source)
    except (RuntimeError, MemoryError) as e:
        if isinstance(e, torch.OutOfMemoryError) or not is_oom(e):
            raise
        message = str(e) or type(e).__name__
    raise torch.OutOfMemoryError(message)  # outside the except: the failed step's tensors are freed


@contextmanager
def study_code(model, source: str, cell: Cell):
    """A failure inside a study's own model callable becomes one StudyError naming the study file
    and the cell; ablate's own errors and out of memory pass as they are."""
    try:
        yield
    except (KeyboardInterrupt, AblateError):
        raise
    except SystemExit as e:  # exit 0 with nothing trained would pass a CI job
        if not callable(model):
            raise
        raise StudyError(
            f"{source}: the model callable called exit({e.code!r}) in cell {cell.id}"
        ) from None
    except models.OutputError as e:
        raise StudyError(f"{source}: {e}") from None
    except Exception as e:
        if not callable(model) or is_oom(e):
            raise
        raise StudyError(
            f"{source}: the model callable failed in cell {cell.id}: {type(e).__name__}: {e}"
        ) from None


def check_model(model, cell: Cell, shape: tuple, classes: int, source: str) -> None:
    """Build a study's own model for `cell` on the CPU, as train_cell does first: one that fails
    or whose output is not [batch, classes] is a StudyError, before anything trains."""
    with study_code(model, source, cell):
        models.build(model, cell.config, shape, classes, cell.seed)


def _plain(group, data, model, device, on_epoch, source) -> list[list[dict]]:
    rows = []
    for cell in group:
        with study_code(model, source, cell):
            rows.append(train_cell(cell, data, model, device, on_epoch))
    return rows
