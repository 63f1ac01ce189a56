"""The fused groups: many cells' models as stacked [G, ...] tensors with batched ops.

MLPs run as baddbmm over the group (Stack); the other built-in models through torch.func's
vmap (Vmapped). Each cell keeps its own init (built by models.build, then stacked), its own
dropout masks (the same counter-based draws as alone), its own batchnorm statistics and its own
lr, momentum and weight decay ([G] tensors). Cells never mix: every op is batched over G, and
the loop's loss is a sum of per-cell means, so each cell's gradient is its own. With SGD an MLP's
weights take their step inside the backward (SGDLinear), never storing their gradient (eager,
fp32 and fp64; bf16 and torch.compile store it and step after the backward). loop.train
runs the epochs; a group here only says how its forward and its optimizer step are computed.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from . import loop, models, rng
from .data import Data
from .study import KEYS, Cell

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as the plain path uses
BN_MOMENTUM, BN_EPS = 0.1, 1e-5  # nn.BatchNorm1d's defaults

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


def shape_key(cell: Cell) -> str:
    """Cells with equal keys share every shape and loop bound, so they can train as one group.
    A study's own keys count too: ablate cannot see what they change (a width, the data)."""
    shared = {k: v for k, v in cell.config.items() if k in SHAPE_KEYS or k not in KEYS}
    return json.dumps(shared, sort_keys=True, default=list)


def can_fuse(cells: list[Cell], model, device="cpu") -> bool:
    """A group whose cells share every shape key trains fused: an MLP anywhere, the other
    built-in models and a study's own model on a GPU only (a study's own model also needs
    vmap_problem to find none). On this 2-core CPU a vmapped CNN group of 8 took 1.3 to 2x as
    long as its cells one by one (grouped convolutions are slow there), so CPUs keep those on
    the plain path; on a GPU fusing removes the kernel launches per cell."""
    fits = model == "mlp" or torch.device(device).type == "cuda"
    return fits and len({shape_key(c) for c in cells}) == 1


def vmap_problem(model, cell: Cell, shape: tuple, classes: int) -> str | None:
    """Why a study's own model cannot train fused, or None. Two of the cell's modules (seeds s and
    s + 1), vmapped over their own random batches of 3 on the CPU, must run forward and backward
    in training, forward in evaluation, and give each module's logits as it gives them alone.
    What vmap refuses: random ops (nn.Dropout draws from torch's global generator; models.Dropout
    draws per cell), Python control flow on a tensor's value (`if x.sum() > 0`, `.item()`)."""
    twins = [replace(cell, seed=cell.seed + i) for i in range(2)]
    dtype = loop.DTYPES[cell.config["precision"]]
    nets = [models.build(model, c.config, shape, classes, c.seed).to(dtype) for c in twins]
    alone = copy.deepcopy(nets)
    x = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    try:
        fused = Vmapped(nets, "cpu", twins)
        logits = fused.forward(x, True, 0)
        logits.sum().backward()
        with torch.no_grad():
            fused.forward(x[:1], False, 0)
    except Exception as e:  # vmap's own errors are RuntimeErrors; a module may raise anything
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    with torch.random.fork_rng(devices=[]):
        expected = torch.stack([net.train()(xs) for net, xs in zip(alone, x, strict=True)])
    if not torch.allclose(logits.detach(), expected.detach(), rtol=1e-4, atol=1e-6):
        return "its vmapped logits differ from each module's own"
    return None


def group(cells: list[Cell], data: Data, device, model: str = "mlp") -> Stack | Vmapped:
    """The cells' models built one by one from their seeds (as alone), then stacked."""
    dtype = loop.DTYPES[cells[0].config["precision"]]
    nets = [
        models.build(
            model, c.config, data.shape, data.classes, c.seed_for("init"), c.seed_for("dropout")
        ).to(dtype)
        for c in cells
    ]
    return Stack(nets, device, cells) if model == "mlp" else Vmapped(nets, device, cells)


def train(
    cells: list[Cell], data: Data, device, on_epoch: Callable | None = None, model: str = "mlp"
) -> list[list[dict]]:
    """Train the cells as one fused group; rows per cell, as loop.train returns them."""
    return loop.train(group(cells, data, device, model), cells, data, device, on_epoch)


class Optimizer:
    """SGD (momentum, weight decay) and Adam with per-cell hyperparameters on [G, ...] parameters,
    as torch.optim computes them for each cell alone."""

    def __init__(self, params: list[torch.Tensor], cells: list[Cell], device, fold=False):
        def column(key):
            values = [c.config[key] for c in cells]
            return torch.tensor(values, device=device, dtype=params[0].dtype)

        self.params, self.kind, self.step_n = params, cells[0].config["optimizer"], 0
        self.lr, self.momentum, self.wd = column("lr"), column("momentum"), column("weight_decay")
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        momenta = {c.config["momentum"] for c in cells}  # from the configs: no device sync
        self.any_momentum = momenta != {0}
        self.any_wd = any(c.config["weight_decay"] != 0 for c in cells)
        self.shared_momentum = momenta.pop() if len(momenta) == 1 else None
        self.fold = fold  # SGD steps the weights in the backward (SGDLinear)

    @torch.no_grad()
    def step_with_product(self, k: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """SGD's step for params[k], whose gradient is the batched product a @ b, taken in the
        backward: the product goes straight into the momentum buffer (a GEMM with beta = the
        momentum when the cells share one; else the buffer is scaled first), or with no
        momentum into the weights (b scaled by each cell's -lr), so a [G, in, out] gradient is
        never written and read back. On 2 CPU cores that took a reference MLP step
        for 10 cells from 13.1 to 12.0 ms (benchmarks/sgd_step.py), memory traffic the bound.
        The same sums as torch.optim.SGD's, m = momentum * m + (gradient + wd * p), in another
        order."""
        p, (m1, _) = self.params[k], self.state[k]
        shape = (-1, 1, 1)
        if not self.any_momentum:  # p - lr * (ab + wd * p) = p * (1 - lr * wd) - lr * ab
            if self.any_wd:
                p.mul_(1 - self.lr.view(shape) * self.wd.view(shape))
            p.baddbmm_(a, b * -self.lr.view(shape))
            return
        if self.shared_momentum is not None:
            m1.baddbmm_(a, b, beta=self.shared_momentum)
        else:
            m1.mul_(self.momentum.view(shape)).baddbmm_(a, b)
        if self.any_wd:
            m1.addcmul_(self.wd.view(shape), p)
        p.addcmul_(self.lr.view(shape), m1, value=-1)

    @torch.no_grad()
    def step(self) -> None:
        self.step_n += 1
        for p, (m1, m2) in zip(self.params, self.state, strict=True):
            if p.grad is None:  # stepped in the backward (SGDLinear)
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            g = p.grad.addcmul_(self.wd.view(shape), p) if self.any_wd else p.grad
            if self.kind == "sgd":
                if self.any_momentum:  # m = g + momentum * m in one pass
                    g = torch.addcmul(g, m1, self.momentum.view(shape), out=m1)
                p.addcmul_(self.lr.view(shape), g, value=-1)
            else:
                b1, b2 = ADAM_BETAS
                m1.lerp_(g, 1 - b1)
                m2.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (m2.sqrt() / math.sqrt(1 - b2**self.step_n)).add_(ADAM_EPS)
                p.sub_((self.lr / (1 - b1**self.step_n)).view(shape) * m1 / denom)
            p.grad = None


class SGDLinear(torch.autograd.Function):
    """baddbmm(b, h, w) whose backward takes w's SGD step itself (Optimizer.step_with_product)
    after h's gradient is computed from the old w; w's own gradient is never stored."""

    @staticmethod
    def forward(ctx, h, w, b, optimizer: Optimizer, k: int):
        ctx.save_for_backward(h, w)
        ctx.optimizer, ctx.k = optimizer, k
        return torch.baddbmm(b, h, w)

    @staticmethod
    def backward(ctx, grad):
        h, w = ctx.saved_tensors
        dh = torch.bmm(grad, w.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        ctx.optimizer.step_with_product(ctx.k, h.transpose(1, 2), grad)
        return dh, None, grad.sum(1, keepdim=True), None, None


class Stack:
    """An MLP group's parameters as [G, ...] leaf tensors, plus batchnorm running stats; the
    forward is baddbmm over the group, with each cell's dropout masks from its own keys."""

    def __init__(self, nets: list[nn.Sequential], device, cells: list[Cell]):
        linears = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
        norms = [[m for m in net if isinstance(m, nn.BatchNorm1d)] for net in nets]

        def stacked(tensors, grad=True):
            joined = torch.stack([t.detach() for t in tensors]).to(device)
            return joined.requires_grad_() if grad else joined

        layers, normed = range(len(linears[0])), range(len(norms[0]))
        self.w = [stacked([net[i].weight.T for net in linears]) for i in layers]  # [G, in, out]
        self.b = [stacked([net[i].bias for net in linears]) for i in layers]
        self.gamma = [stacked([net[i].weight for net in norms]) for i in normed]
        self.beta = [stacked([net[i].bias for net in norms]) for i in normed]
        self.mean = [stacked([net[i].running_mean for net in norms], False) for i in normed]
        self.var = [stacked([net[i].running_var for net in norms], False) for i in normed]
        self.batchnorm = bool(norms[0])
        self.cfg, self.dtype, g = cells[0].config, self.w[0].dtype, len(cells)
        self.activation = models.ACTIVATIONS[self.cfg["activation"]]()
        p = torch.tensor([c.config["dropout"] for c in cells], device=device, dtype=self.dtype)
        self.dropout = bool((p > 0).any())
        thresholds = [rng.threshold(c.config["dropout"]) for c in cells]
        self.thresholds = torch.tensor(thresholds, device=device).view(g, 1, 1)
        self.scale = (1.0 / (1.0 - p)).view(g, 1, 1)
        seeds = torch.tensor([[c.seed_for("dropout")] for c in cells], device=device)
        self.layer_keys = [rng.key(seeds, rng.DROPOUT, i) for i in range(len(self.cfg["hidden"]))]
        # SGD steps the weights in the backward (SGDLinear); bf16's weights see autocast's casts
        fold = self.cfg["optimizer"] == "sgd" and self.cfg["precision"] != "bf16"
        params = [*self.w, *self.b, *self.gamma, *self.beta]
        self.optimizer = Optimizer(params, cells, device, fold)

    def step(self) -> None:
        self.optimizer.step()

    def linear(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer i's h @ w + b; while training with SGD, the backward also steps w (not under
        torch.compile, which gets the plain product and leaves the step to Optimizer.step)."""
        if self.optimizer.fold and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return SGDLinear.apply(h, self.w[i], self.b[i][:, None], self.optimizer, i)
        return torch.baddbmm(self.b[i][:, None], h, self.w[i])

    def forward(self, x: torch.Tensor, train: bool, step: int) -> torch.Tensor:
        """x [G or 1, B, C, H, W] -> logits [G, B, classes]."""
        h = x.flatten(2).expand(len(self.w[0]), -1, -1).to(self.dtype)
        for i in range(len(self.w) - 1):
            h = self.linear(i, h)
            if self.gamma:  # in the weights' dtype: under bf16 autocast the statistics stay fp32
                h = self.normalize(i, h.to(self.gamma[i].dtype), train)
            h = self.activation(h)
            if train and self.dropout:
                g, b, w = h.shape
                draws = rng.uniform24(rng.key(self.layer_keys[i], step), b * w, h.device)
                keep = (draws.view(g, b, w) >= self.thresholds).to(h.dtype).mul_(self.scale)
                h = h * keep  # one product to differentiate, not two: the same bits
        return self.linear(len(self.w) - 1, h)

    def normalize(self, i: int, h: torch.Tensor, train: bool) -> torch.Tensor:
        """Batchnorm layer i: batch statistics in training (updating the running ones, as
        nn.BatchNorm1d does), the running ones in evaluation."""
        if train:  # the variance as the mean square of the centred values: 2.4x faster than var()
            mean = h.mean(1, keepdim=True)
            centred = h - mean
            var = centred.square().mean(1, keepdim=True)
            n = h.shape[1]
            with torch.no_grad():
                self.mean[i].lerp_(mean.detach()[:, 0], BN_MOMENTUM)
                unbiased = (
                    var.detach()[:, 0] * n / max(n - 1, 1)
                )  # the running variance is unbiased
                self.var[i].lerp_(unbiased, BN_MOMENTUM)
            centred = centred * torch.rsqrt(var + BN_EPS)
        else:
            centred = (h - self.mean[i][:, None]) * torch.rsqrt(self.var[i][:, None] + BN_EPS)
        return centred * self.gamma[i][:, None] + self.beta[i][:, None]


class Vmapped:
    """Any built-in model's group via torch.func: parameters and buffers (batchnorm statistics,
    dropout keys) stacked [G, ...], the forward vmapped over the cells; convolutions with a
    batched weight run as grouped convolutions."""

    def __init__(self, nets: list[nn.Module], device, cells: list[Cell]):
        nets = [n.to(device) for n in nets]
        self.batchnorm = models.has_batchnorm(nets[0])
        self.weights, self.buffers = stack_module_state(nets)  # leaves that require grad
        # the structure alone, on no device; its dropouts count the steps
        self.base = copy.deepcopy(nets[0]).to("meta")
        self.dtype = next(iter(self.weights.values())).dtype
        self.optimizer = Optimizer(list(self.weights.values()), cells, device)

    def step(self) -> None:
        self.optimizer.step()

    def forward(self, x: torch.Tensor, train: bool, step: int) -> torch.Tensor:
        self.base.train(train)
        call = lambda w, b, xs: functional_call(self.base, (w, b), (xs,))  # noqa: E731
        x = x.to(self.dtype)
        if x.shape[0] == 1:
            return vmap(call, in_dims=(0, 0, None))(self.weights, self.buffers, x[0])
        return vmap(call)(self.weights, self.buffers, x)
