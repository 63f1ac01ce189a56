"""Which path a group trains on (fused or cell by cell), on which device, and what a failure means.

The epochs themselves are loop.train's, for every path; a study's own model code runs inside
study_code, which turns its failures into one line naming the study file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch

from . import fused, loop, models, optim, testhooks
from .errors import AblateError, StudyError
from .sources import Data
from .study import Cell, Study


def parse_device(name: str | torch.device | None) -> torch.device | None:
    """ "auto" or None (None), "cpu", "cuda" or "cuda:N" (a torch.device); anything else is a
    user error."""
    if name is None or name == "auto":
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


def pick_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device named, or for "auto" (None) the GPU where there is one; a GPU this machine lacks
    is a user error."""
    if (device := parse_device(name)) is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        have = f"{torch.cuda.device_count()} GPUs" if torch.cuda.is_available() else "no GPU"
        raise AblateError(f"--device {name}: this machine has {have}; try --device auto or cpu")
    return device


def configure(deterministic: bool) -> None:
    """fp32 everywhere (no TF32), and with `deterministic` the algorithms that repeat bitwise."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic)


def train_cell(
    cell: Cell,
    data: Data,
    model,
    device,
    on_epoch: Callable | None = None,
    trace: list | None = None,
) -> list[dict]:
    """Train one cell alone, the plain path; a row per epoch. `trace` collects per-step losses."""
    steps = [] if trace is not None else None
    rows = loop.train(loop.Plain(cell, data, model, device), [cell], data, device, on_epoch, steps)
    if trace is not None:
        trace.extend(losses[0] for losses in steps)
    return rows[0]


def auto_group(cells: list[Cell], data: Data, device: torch.device, model="mlp") -> int:
    """The default --max-group: on a GPU, as many cells as cell_bytes says fit in half the free
    memory; on a CPU 16: the reference MLP's groups (ReLU, batchnorm) ran 20k cell-samples/s at
    5 cells, 26k at 10 and 27k at 16 on 2 cores (2026-12-05)."""
    if device.type != "cuda" or not cells:
        return 16
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(1024, free // 2 // cell_bytes(cells[0], data, model)))


def cell_bytes(cell: Cell, data: Data, model="mlp") -> int:
    """What one more cell adds to a fused group's peak memory on a GPU: its parameters and their
    optimizer state (optim.Rule.buffers; an MLP's SGD weights keep no gradient: fused.SGDLinear),
    a training batch's activations kept for the backward and their gradients, two activations of
    an evaluation chunk (no backward there; the chunk's input is shared by the cells), the
    epoch's order and its hash."""
    cfg = cell.config
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
    rule = optim.rule(cfg["optimizer"])
    stored = rule.product is None or model != "mlp"  # the gradient, unless SGDLinear steps it
    copies = 1 + rule.buffers(cfg["momentum"] != 0) + stored
    width = 8 if cfg["precision"] == "fp64" else 4
    train = cfg["batch_size"] * (2 * sum(sizes) + math.prod(data.shape))
    evaluate = loop.EVAL_BATCH * 2 * max(sizes)
    order = len(data.train_x) * 8 * 3  # int64: the hashed counters, argsort's values and indices
    return (params * copies + train + evaluate) * width + order


_PROBLEMS: dict[tuple, str | None] = {}


def own_model_problem(model, cell: Cell, shape: tuple, classes: int) -> str | None:
    """fused.vmap_problem, asked once per model, config and data shape in this process (the
    runner asks first, to say why once; a Ray worker asks again for itself)."""
    key = (model, repr(sorted(cell.config.items())), tuple(shape), classes)
    if key not in _PROBLEMS:
        _PROBLEMS[key] = fused.vmap_problem(model, cell, shape, classes)
    return _PROBLEMS[key]


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
    A group of one, or one fused.can_fuse refuses, takes the plain per-cell path. A failure in a
    study's model callable becomes a StudyError naming `source`, the study file. Any out of
    memory (is_oom) is raised as torch.OutOfMemoryError, which the runner splits on."""
    if testhooks.too_large(len(group)):
        raise torch.OutOfMemoryError(f"test hook: a group of {len(group)} cells")
    try:
        if len(group) > 1 and fused.can_fuse(group, model, device):
            with study_code(model, source, group[0]):
                own = callable(model)
                if not (own and own_model_problem(model, group[0], data.shape, data.classes)):
                    return fused.train(group, data, device, on_epoch, model)
        rows = []
        for cell in group:
            with study_code(model, source, cell):
                rows.append(train_cell(cell, data, model, device, on_epoch))
        return rows
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


def check_models(
    study: Study, todo: list[Cell], shape: tuple, classes: int, own: bool = True
) -> None:
    """Build each shape's model once and pass two zero images through it, so a `layers` spec that
    does not fit the dataset, or a study's own model whose output is not [batch, classes], fails
    here as one line, before anything is written. `own`: check a study's own model here too;
    under Ray its code runs on the workers only (a model may end its process on purpose)."""
    if callable(study.model):
        for cell in {fused.shape_key(c): c for c in todo}.values() if own else ():
            check_model(study.model, cell, shape, classes, study.source)
        return
    for cell in {fused.shape_key(c): c for c in todo}.values():
        try:
            net = models.build(study.model, cell.config, shape, classes, 0)
            with torch.no_grad():
                net.eval()(torch.zeros(2, *shape))
        except (RuntimeError, ValueError) as e:
            key = models.kind(study.model).shape_key
            what = f" with {key}={cell.config[key]}" if key else ""
            raise StudyError(
                f"{study.source}: model '{study.model}'{what} does not fit {study.dataset} "
                f"inputs of shape {shape}: {str(e).splitlines()[0]}"
            ) from None


def unfused(study: Study, todo: list[Cell], device, shape: tuple, classes: int) -> str | None:
    """The line to say, once per study, when a study's own model will train cell by cell on a
    device that would fuse it (own_model_problem; its answer is kept for the training)."""
    if not callable(study.model) or not fused.can_fuse(todo[:1], study.model, device):
        return None
    for cell in {fused.shape_key(c): c for c in todo}.values():
        with study_code(study.model, study.source, cell):
            problem = own_model_problem(study.model, cell, shape, classes)
        if problem:
            return (
                f"{study.source}: the model callable trains cell by cell, not fused: "
                f"torch.func.vmap cannot take it ({problem})"
            )
    return None
