"""The fused engine: a group of cells trained as stacked [G, ...] tensors with batched ops.

MLPs run as baddbmm over the group (Stack); the other built-in models through torch.func's
vmap (Vmapped). Each cell keeps its own init (built by models.build, then stacked), its own sample
order, flips and dropout masks (the same counter-based draws as the plain path), its
own batchnorm statistics and its own lr, momentum and weight decay ([G] tensors).
Cells never mix: every op is batched over G, and the loss is a sum of per-cell means,
so each cell's gradient is its own.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from . import models, rng
from .data import Data, hflip, to_float
from .study import Cell

DTYPES = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "bf16": torch.float32,
    "fp64": torch.float64,
}  # weights
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as the plain path uses
BN_MOMENTUM, BN_EPS = 0.1, 1e-5  # nn.BatchNorm1d's defaults
EVAL_BATCH = 2000
ACTIVATIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "gelu": F.gelu}

# a group shares every key that changes the graph or the loop; the rest may differ per cell
SHAPE_KEYS = (
    "hidden",
    "activation",
    "batchnorm",
    "optimizer",
    "batch_size",
    "epochs",
    "train_subset",
    "precision",
    "layers",
    "loss",
)


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


class Stack:
    """An MLP group's parameters as [G, ...] leaf tensors, plus batchnorm running stats; the
    forward is baddbmm over the group, with each cell's dropout masks from its own keys."""

    def __init__(self, nets: list[nn.Sequential], device, cells: list[Cell]):
        linears = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
        bns = [[m for m in net if isinstance(m, nn.BatchNorm1d)] for net in nets]
        stack = lambda ts: torch.stack([t.detach() for t in ts]).to(device).requires_grad_()  # noqa: E731
        self.w = [
            stack([ls[i].weight.T for ls in linears]) for i in range(len(linears[0]))
        ]  # [G, in, out]
        self.b = [stack([ls[i].bias for ls in linears]) for i in range(len(linears[0]))]
        self.gamma = [stack([bs[i].weight for bs in bns]) for i in range(len(bns[0]))]
        self.beta = [stack([bs[i].bias for bs in bns]) for i in range(len(bns[0]))]
        self.mean = [
            torch.stack([bs[i].running_mean for bs in bns]).to(device) for i in range(len(bns[0]))
        ]
        self.var = [
            torch.stack([bs[i].running_var for bs in bns]).to(device) for i in range(len(bns[0]))
        ]
        self.cfg, self.dtype, g = cells[0].config, self.w[0].dtype, len(cells)
        p = torch.tensor([c.config["dropout"] for c in cells], device=device, dtype=self.dtype)
        self.dropout = bool((p > 0).any())
        self.thresholds = torch.tensor(
            [rng.threshold(c.config["dropout"]) for c in cells], device=device
        )
        self.thresholds, self.scale = self.thresholds.view(g, 1, 1), (1.0 / (1.0 - p)).view(g, 1, 1)
        seeds = torch.tensor([[c.seed] for c in cells], device=device)
        self.layer_keys = [rng.key(seeds, rng.DROPOUT, i) for i in range(len(self.cfg["hidden"]))]

    def params(self) -> list[torch.Tensor]:
        return [*self.w, *self.b, *self.gamma, *self.beta]

    def forward(self, x: torch.Tensor, train: bool, step: int) -> torch.Tensor:
        """x [G or 1, B, C, H, W] -> logits [G, B, classes]; `step` numbers the training forwards."""
        x = x.flatten(2).expand(len(self.w[0]), -1, -1).to(self.dtype)
        keys = [rng.key(k, step) for k in self.layer_keys] if train and self.dropout else None
        return _mlp(self, x, self.cfg, train, keys and [*keys, (self.thresholds, self.scale)])


def _mlp(s: Stack, x: torch.Tensor, cfg: dict, train: bool, drop_keys: list | None) -> torch.Tensor:
    """x [G, B, D] -> logits [G, B, classes]."""
    act = ACTIVATIONS[cfg["activation"]]
    h = x
    for i in range(len(s.w) - 1):
        h = torch.baddbmm(s.b[i][:, None], h, s.w[i])
        if s.gamma:  # in the weights' dtype: under bf16 autocast the statistics stay fp32
            h = batchnorm(s, i, h.to(s.gamma[i].dtype), train)
        h = act(h)
        if drop_keys is not None:
            keys, p = drop_keys[i], drop_keys[-1]
            g, b, w = h.shape
            keep = rng.uniform24(keys, b * w, h.device).view(g, b, w) >= p[0]
            h = h * keep * p[1]
    return torch.baddbmm(s.b[-1][:, None], h, s.w[-1])


class Vmapped:
    """Any built-in model's group via torch.func: parameters and buffers (batchnorm statistics,
    dropout keys) stacked [G, ...], the forward vmapped over the cells; convolutions with a
    batched weight run as grouped convolutions."""

    def __init__(self, nets: list[nn.Module], device):
        nets = [n.to(device) for n in nets]
        self.weights, self.buffers = stack_module_state(nets)  # leaves that require grad
        self.base = copy.deepcopy(nets[0]).to(
            "meta"
        )  # the structure alone; its dropouts count steps
        self.dtype = next(iter(self.weights.values())).dtype

    def params(self) -> list[torch.Tensor]:
        return list(self.weights.values())

    def forward(self, x: torch.Tensor, train: bool, step: int) -> torch.Tensor:
        self.base.train(train)
        call = lambda w, b, xs: functional_call(self.base, (w, b), (xs,))  # noqa: E731
        x = x.to(self.dtype)
        if x.shape[0] == 1:
            return vmap(call, in_dims=(0, 0, None))(self.weights, self.buffers, x[0])
        return vmap(call)(self.weights, self.buffers, x)


def batchnorm(s: Stack, i: int, h: torch.Tensor, train: bool) -> torch.Tensor:
    if train:
        mean, var = h.mean(1), h.var(1, unbiased=False)
        n = h.shape[1]
        with torch.no_grad():
            s.mean[i].lerp_(mean.detach(), BN_MOMENTUM)
            s.var[i].lerp_(var.detach() * n / max(n - 1, 1), BN_MOMENTUM)  # running var is unbiased
    else:
        mean, var = s.mean[i], s.var[i]
    return (h - mean[:, None]) * torch.rsqrt(var[:, None] + BN_EPS) * s.gamma[i][:, None] + s.beta[
        i
    ][:, None]


class Optimizer:
    """SGD (momentum, weight decay) and Adam with per-cell hyperparameters, as torch.optim computes them."""

    def __init__(self, params: list[torch.Tensor], cells: list[Cell], device):
        def col(k):
            return torch.tensor([c.config[k] for c in cells], device=device, dtype=params[0].dtype)

        self.params, self.kind, self.step_n = params, cells[0].config["optimizer"], 0
        self.lr, self.momentum, self.wd = col("lr"), col("momentum"), col("weight_decay")
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        self.any_wd = bool((self.wd != 0).any())
        self.any_momentum = bool((self.momentum != 0).any())

    @torch.no_grad()
    def step(self) -> None:
        self.step_n += 1
        for p, (m1, m2) in zip(self.params, self.state, strict=True):
            shape = (-1,) + (1,) * (p.dim() - 1)
            g = p.grad.addcmul_(self.wd.view(shape), p) if self.any_wd else p.grad
            if self.kind == "sgd":
                if self.any_momentum:
                    g = m1.mul_(self.momentum.view(shape)).add_(g)
                p.addcmul_(self.lr.view(shape), g, value=-1)
            else:
                b1, b2 = ADAM_BETAS
                m1.lerp_(g, 1 - b1)
                m2.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (m2.sqrt() / math.sqrt(1 - b2**self.step_n)).add_(ADAM_EPS)
                p.sub_((self.lr / (1 - b1**self.step_n)).view(shape) * m1 / denom)
            p.grad = None


def cell_losses(logits: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy") -> torch.Tensor:
    """Cross-entropy of every sample, [G, B]; flat rows take a faster kernel than [G, C, B].
    "softmax_then_cross_entropy" first applies softmax, as engine.criterion does."""
    g, b, c = logits.shape
    if loss == "softmax_then_cross_entropy":
        logits = F.softmax(logits, dim=-1)
    return F.cross_entropy(logits.reshape(g * b, c), y.reshape(g * b), reduction="none").view(g, b)


def prepare(
    data: Data, raw: torch.Tensor, norm: list[bool], flips: torch.Tensor | None
) -> torch.Tensor:
    """uint8 [G, B, C, H, W] (or [B, ...] shared by all cells) -> float [G or 1, B, C, H, W]; each
    cell normalised or not, mirrored where `flips` [G, B] says. Skips the work no cell asks for."""
    if all(norm) or not any(norm):
        x = to_float(data, raw, norm[0])
    else:
        x = torch.where(
            torch.tensor(norm, device=raw.device).view(-1, 1, 1, 1, 1),
            to_float(data, raw, True),
            to_float(data, raw, False),
        )
    if flips is not None:
        x = hflip(x, flips)
    return x if x.dim() == 5 else x[None]


def epoch_end(n: int, batch_size: int, batchnorm: bool) -> int:
    """How many samples of an epoch's order train: all but a last batch of one sample when the
    model has batchnorm (nn.BatchNorm1d refuses one sample; its variance would be 0). Both paths
    use it, so a cell trains alike alone and in a group; the order still permutes all n."""
    return n - 1 if batchnorm and n > 1 and n % batch_size == 1 else n


def can_fuse(cells: list[Cell], model, device="cpu") -> bool:
    """A group whose cells share every shape key trains fused: an MLP anywhere, the other
    built-in models on a GPU only. On this 2-core CPU a vmapped CNN group of 8 took 1.3 to 2x
    as long as its cells one by one (grouped convolutions are slow there), so CPUs keep those
    on the plain path; on a GPU fusing removes the kernel launches per cell."""
    fits = model == "mlp" or (
        isinstance(model, str) and model in models.BUILDERS and torch.device(device).type == "cuda"
    )
    return fits and len({tuple(str(c.config[k]) for k in SHAPE_KEYS) for c in cells}) == 1


@torch.no_grad()
def evaluate(s: Stack | Vmapped, data: Data, cfgs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell mean test loss and accuracy, [G] each; normalisation may differ per cell."""
    g = len(cfgs)
    norm = [c["normalize"] for c in cfgs]
    loss = torch.zeros(g, device=data.test_x.device, dtype=s.dtype)
    correct = torch.zeros(g, device=data.test_x.device, dtype=torch.int64)
    for i in range(0, len(data.test_x), EVAL_BATCH):
        x = prepare(data, data.test_x[i : i + EVAL_BATCH], norm, None)
        with autocast(cfgs[0]["precision"], x.device):
            logits = s.forward(x, False, 0).to(s.dtype)
        y = data.test_y[i : i + EVAL_BATCH].expand(g, -1)
        loss += cell_losses(logits, y, cfgs[0]["loss"]).sum(1)
        correct += (logits.argmax(-1) == y).sum(1)
    n = len(data.test_x)
    return loss / n, correct.double() / n


def train(
    cells: list[Cell], data: Data, device, on_epoch: Callable | None = None, model: str = "mlp"
) -> list[list[dict]]:
    """Train the group at once; rows per cell as engine.train_cell returns them."""
    g, cfg = len(cells), cells[0].config
    dtype = DTYPES[cfg["precision"]]
    cfgs = [c.config for c in cells]
    nets = [
        models.build(model, c.config, data.shape, data.classes, c.seed).to(dtype) for c in cells
    ]
    s = Stack(nets, device, cells) if model == "mlp" else Vmapped(nets, device)
    opt = Optimizer(s.params(), cells, device)
    seeds = torch.tensor([[c.seed] for c in cells], device=device)
    n = min(cfg["train_subset"] or len(data.train_x), len(data.train_x))
    bs = cfg["batch_size"]
    end = epoch_end(n, bs, models.has_batchnorm(nets[0]))
    steps = math.ceil(end / bs)
    norm = [c["normalize"] for c in cfgs]
    flip_on = torch.tensor([c["hflip"] for c in cfgs], device=device).view(g, 1)
    any_flip = any(c["hflip"] for c in cfgs)
    rows: list[list[dict]] = [[] for _ in cells]
    alive = [True] * g
    step = 0
    for epoch in range(1, cfg["epochs"] + 1):
        start = time.perf_counter()
        order = rng.permutation(rng.key(seeds, rng.ORDER, epoch), n, device)  # [G, n]
        if any_flip:
            flips = (
                rng.uniform24(rng.key(seeds, rng.FLIP, epoch), n, device) < rng.threshold(0.5)
            ) & flip_on
        total = torch.zeros(g, device=device, dtype=dtype)
        for i in range(0, end, bs):
            idx = order[:, i : i + bs]
            x = prepare(data, data.train_x[idx], norm, flips[:, i : i + bs] if any_flip else None)
            with autocast(cfg["precision"], device):
                logits = s.forward(x, True, step)
            loss = cell_losses(logits.to(dtype), data.train_y[idx], cfg["loss"]).mean(1)
            loss.sum().backward()  # cells are independent: each gets the gradient of its own loss
            opt.step()
            total += loss.detach()
            step += 1
        train_loss = (total / steps).tolist()
        test_loss, test_acc = evaluate(s, data, cfgs)
        seconds = time.perf_counter() - start
        for j, cell in enumerate(cells):
            if not alive[j]:
                continue
            ok = math.isfinite(train_loss[j])
            rows[j].append(
                dict(
                    epoch=epoch,
                    train_loss=train_loss[j],
                    test_loss=test_loss[j].item(),
                    test_acc=test_acc[j].item(),
                    seconds=seconds,
                    status="ok" if ok else "diverged",
                )
            )
            if on_epoch:
                on_epoch(cell, epoch, train_loss[j])
            if not ok:
                alive[j] = False
                for r in rows[j]:
                    r["status"] = "diverged"
        if not any(alive):
            break
    return rows
