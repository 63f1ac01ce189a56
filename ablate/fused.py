"""The fused groups: many cells' models as stacked [G, ...] tensors with batched ops.

MLPs run as baddbmm over the group (Stack); the other built-in models through torch.func's
vmap (Vmapped). Each cell keeps its own init (built by models.build, then stacked), its own
dropout masks (the same counter-based draws as alone), its own batchnorm statistics and its own
lr, momentum and weight decay ([G] tensors). Cells never mix: every op is batched over G, and
the loop's loss is a sum of per-cell means, so each cell's gradient is its own. The optimizer's
step is its optim.Rule's; with SGD (a rule with a product) an MLP's weights take their step
inside the backward (SGDLinear), never storing their gradient (eager, fp32 and fp64; bf16 and
torch.compile store it and step after the backward). loop.train runs the epochs; a group here
only says how its forward and its optimizer step are computed.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from . import loop, models, optim, rng
from .keys import KEYS
from .sources import Data
from .study import Cell

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


# keys a fused MLP group on a GPU may mix: each cell selects its own (Stack.activate and
# Stack.normalize compute every variant), which costs little there against launching a group's
# step once per variant
SELECTED_KEYS = ("activation", "batchnorm")


def shape_key(cell: Cell, device=None, model="mlp") -> str:
    """Cells with equal keys share every shape and loop bound, so they can train as one group.
    A study's own keys count too: ablate cannot see what they change (a width, the data). On a
    GPU (`device`) an MLP's SELECTED_KEYS do not count (wide_groups)."""
    wide = wide_groups(model, device)
    shared = {
        k: v
        for k, v in cell.config.items()
        if (k in SHAPE_KEYS or k not in KEYS) and not (wide and k in SELECTED_KEYS)
    }
    return json.dumps(shared, sort_keys=True, default=list)


def wide_groups(model, device) -> bool:
    """Whether cells that differ in activation or batchnorm train as one group: a built-in MLP
    on a GPU. On 2 CPU cores computing every variant for every cell costs more than it saves
    (README, "Groups")."""
    return model == "mlp" and device is not None and torch.device(device).type == "cuda"


def can_fuse(cells: list[Cell], model, device="cpu") -> bool:
    """A group whose cells share every shape key trains fused: an MLP anywhere, the other
    built-in models and a study's own model on a GPU only (a study's own model also needs
    vmap_problem to find none). On this 2-core CPU a vmapped CNN group of 8 took 1.3 to 2x as
    long as its cells one by one (grouped convolutions are slow there), so CPUs keep those on
    the plain path; on a GPU fusing removes the kernel launches per cell."""
    fits = model == "mlp" or torch.device(device).type == "cuda"
    return fits and len({shape_key(c, device, model) for c in cells}) == 1


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
    """Train the cells as one fused group; rows per cell, as loop.train returns them. A group
    mixing batchnorm whose epochs end in a batch of one trains as two (loop.epoch_end: cells
    with batchnorm skip that sample, the others train on it)."""
    normed = [c.config["batchnorm"] for c in cells]
    n = min(cells[0].config["train_subset"] or len(data.train_x), len(data.train_x))
    size = cells[0].config["batch_size"]
    if len(set(normed)) > 1 and loop.epoch_end(n, size, True) != n:
        rows = {}
        for flag in (False, True):
            part = [c for c, b in zip(cells, normed, strict=True) if b == flag]
            trained = train(part, data, device, on_epoch, model)
            rows.update(zip((c.id for c in part), trained, strict=True))
        return [rows[c.id] for c in cells]
    return loop.train(group(cells, data, device, model), cells, data, device, on_epoch)


class Optimizer:
    """A group's optimizer on [G, ...] parameters (or [G * W] ones, a cell's W values side by
    side) with per-cell lr, momentum and weight decay: the name's optim.Rule, as torch.optim
    computes it for each cell alone. `fold`: the rule's step runs inside the backward where the
    MLP allows it (SGDLinear)."""

    def __init__(self, params: list[torch.Tensor], cells: list[Cell], device, fold=False):
        def column(key):
            values = [c.config[key] for c in cells]
            return torch.tensor(values, device=device, dtype=params[0].dtype)

        self.params, self.step_n = params, 0
        self.rule = optim.rule(cells[0].config["optimizer"])
        momenta = {c.config["momentum"] for c in cells}  # from the configs: no device sync
        any_momentum = momenta != {0}
        any_wd = any(c.config["weight_decay"] != 0 for c in cells)
        shared = momenta.pop() if len(momenta) == 1 else None
        lr, momentum, wd = column("lr"), column("momentum"), column("weight_decay")
        # each hyperparameter shaped to each parameter once: a view per step is an operation
        self.hyper = [
            optim.Hyper(
                *(_per_cell(v, p) for v in (lr, momentum, wd)), any_momentum, any_wd, shared
            )
            for p in params
        ]
        n = self.rule.buffers(any_momentum)
        self.state = [tuple(torch.zeros_like(p) for _ in range(n)) for p in params]
        self.fold = fold and self.rule.product is not None

    @torch.no_grad()
    def step_with_product(self, k: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """The step for params[k], whose gradient is the batched product a @ b, taken in the
        backward (optim.Rule.product)."""
        self.rule.product(self.params[k], a, b, self.state[k], self.hyper[k])

    @torch.no_grad()
    def step_one(self, k: int, g: torch.Tensor) -> None:
        """The step for params[k] given its gradient g (a bias's, in the backward, before
        step counts this step); g may be overwritten."""
        self.rule.step(self.params[k], g, self.state[k], self.hyper[k], self.step_n + 1)

    @torch.no_grad()
    def step(self) -> None:
        for k, p in enumerate(self.params):
            if p.grad is not None:  # None: stepped in the backward (SGDLinear)
                self.step_one(k, p.grad)
                p.grad = None
        self.step_n += 1


def _per_cell(column: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A [G] column shaped to broadcast over p: [G, 1, ...] for a [G, ...] parameter, each value
    repeated W times for a flat [G * W] one."""
    if p.shape[0] == len(column):
        return column.view(-1, *[1] * (p.dim() - 1))
    return column.repeat_interleave(p.numel() // len(column))


class SGDLinear(torch.autograd.Function):
    """baddbmm(b, h, w) whose backward takes w's and b's optimizer steps itself (Optimizer's
    step_with_product and step_one: a rule with a product, SGD's) after h's gradient is computed
    from the old w; neither gradient is stored."""

    @staticmethod
    def forward(ctx, h, w, b, optimizer: Optimizer, k: int, kb: int):
        ctx.save_for_backward(h, w)
        ctx.optimizer, ctx.k, ctx.kb = optimizer, k, kb
        return torch.baddbmm(b, h, w)

    @staticmethod
    def backward(ctx, grad):
        h, w = ctx.saved_tensors
        dh = torch.bmm(grad, w.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        ctx.optimizer.step_with_product(ctx.k, h.transpose(1, 2), grad)
        ctx.optimizer.step_one(ctx.kb, grad.sum(1, keepdim=True))
        return dh, None, None, None, None, None


class Stack:
    """An MLP group's parameters as [G, ...] leaf tensors (batchnorm's as [G * W], the layout
    F.batch_norm takes), plus batchnorm running stats; the forward is baddbmm over the group,
    with each cell's dropout masks from its own keys, drawn for all layers in one hash.

    Cells may differ in activation and in batchnorm (a GPU groups them: fused.shape_key): each
    activation is computed and each cell selects its own, and a cell without batchnorm carries
    an unused one (gamma 1, beta 0) whose output it does not select."""

    def __init__(self, nets: list[nn.Sequential], device, cells: list[Cell]):
        linears = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
        normed = [any(isinstance(m, nn.BatchNorm1d) for m in net) for net in nets]

        def stacked(tensors, grad=True):
            joined = torch.stack([t.detach() for t in tensors]).to(device)
            return joined.requires_grad_() if grad else joined

        layers, g = range(len(linears[0])), len(cells)
        self.w = [stacked([net[i].weight.T for net in linears]) for i in layers]  # [G, in, out]
        self.b = [stacked([net[i].bias[None] for net in linears]) for i in layers]  # [G, 1, out]
        self.dtype, self.cfg = self.w[0].dtype, cells[0].config
        widths = [w.shape[2] for w in self.w[:-1]]
        self.batchnorm = any(normed)
        self.gamma, self.beta, self.mean, self.var = [], [], [], []
        if self.batchnorm:
            norms = [_norms(net, widths, self.dtype) for net in nets]
            for i in range(len(widths)):
                flat = [[t.detach().flatten() for t in n[i]] for n in norms]
                for j, into in enumerate((self.gamma, self.beta, self.mean, self.var)):
                    into.append(torch.cat([f[j] for f in flat]).to(device))
            self.gamma = [t.requires_grad_() for t in self.gamma]
            self.beta = [t.requires_grad_() for t in self.beta]
        # which cells select batchnorm's output: None when all or none have it
        self.normed = None
        if self.batchnorm and not all(normed):
            self.normed = torch.tensor(normed, device=device).view(g, 1, 1)
        self.activations = _selections([c.config["activation"] for c in cells], device)
        ps = [c.config["dropout"] for c in cells]
        self.dropout = any(p > 0 for p in ps)
        self.cutoffs = rng.cutoffs(ps, device)  # [G, 1]
        self.scale = torch.tensor([1 / (1 - p) for p in ps], device=device, dtype=self.dtype)
        self.scale = self.scale.view(g, 1)
        seeds = torch.tensor([[c.seed_for("dropout")] for c in cells], device=device)
        self.layer_keys = rng.key(seeds, rng.DROPOUT, torch.arange(len(widths), device=device))
        self.widths, self.keys, self.device = widths, None, torch.device(device)
        # a rule with a product steps the weights in the backward (SGDLinear); bf16's weights
        # see autocast's casts
        params = [*self.w, *self.b, *self.gamma, *self.beta]
        self.optimizer = Optimizer(params, cells, device, self.cfg["precision"] != "bf16")
        # such a rule reads no host-side step count that a replayed step would freeze
        self.graphable = self.optimizer.fold
        self.counters: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def step(self) -> None:
        self.optimizer.step()

    def begin_epoch(self, first_step: int, steps: int) -> None:
        """Hash the epoch's dropout keys, [steps, G, layers], in one go: training forward t of
        the epoch draws with keys[t], as rng.key(layer key, first_step + t) would. Filled in
        place, so a captured CUDA graph reads each epoch's."""
        if not self.dropout:
            return
        at = torch.arange(first_step, first_step + steps, device=self.device).view(-1, 1, 1)
        keys = rng.int32(rng.key(self.layer_keys[None], at))
        if self.keys is None or self.keys.shape != keys.shape:
            self.keys = keys
        else:
            self.keys.copy_(keys)

    def linear(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer i's h @ w + b; while training with a folding rule (SGD), the backward also
        steps w and b (not under torch.compile, which gets the plain product and leaves the step
        to Optimizer.step)."""
        if self.optimizer.fold and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            n = len(self.w)
            return SGDLinear.apply(h, self.w[i], self.b[i], self.optimizer, i, n + i)
        return torch.baddbmm(self.b[i], h, self.w[i])

    def forward(self, x: torch.Tensor, train: bool, step: torch.Tensor) -> torch.Tensor:
        """x [G or 1, B, C, H, W] -> logits [G, B, classes]; `step` ([1], on the device) is the
        training forward's index in the epoch begin_epoch hashed."""
        g, b = len(self.w[0]), x.shape[1]
        h = x.view(x.shape[0], b, -1)
        if h.shape[0] != g:
            h = h.expand(g, -1, -1)
        h = h.to(self.dtype)
        masks = self.masks(step, b) if train and self.dropout else None
        for i in range(len(self.w) - 1):
            h = self.linear(i, h)
            if self.gamma:  # in the weights' dtype: under bf16 autocast the statistics stay fp32
                h = self.normalize(i, h.to(self.gamma[i].dtype), train)
            h = self.activate(h)
            if masks is not None:
                h = h * masks[i].view(g, b, -1)
        return self.linear(len(self.w) - 1, h)

    def masks(self, step: torch.Tensor, b: int) -> tuple[torch.Tensor, ...]:
        """Every layer's dropout keep-and-scale mask for a batch of b, [G, b * width] each, from
        one hash over all layers' counters: bitwise rng.uniform24(key, b * width) >= threshold
        per layer, as models.Dropout draws alone."""
        g = len(self.w[0])
        if b not in self.counters:  # held here: a captured graph reads them where they are
            counters, layer_of = _counters(b, tuple(self.widths), self.device)
            self.counters[b] = counters, layer_of.expand(1, g, -1)
        counters, layer_of = self.counters[b]
        k = self.keys.index_select(0, step)  # [1, G, layers]
        if len(self.widths) > 1:  # gather: index_select on the last dim took 2.6 ms on a CPU
            k = k.gather(2, layer_of)
        keep = rng.above(k, counters, self.cutoffs) * self.scale
        return keep.view(g, -1).split([b * w for w in self.widths], 1)

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        """Each cell's activation: one call where the group shares it, else each computed and
        selected per cell."""
        (first, _), *others = self.activations
        out = first(h)
        for act, chosen in others:
            out = torch.where(chosen, act(h), out)
        return out

    def normalize(self, i: int, h: torch.Tensor, train: bool) -> torch.Tensor:
        """Batchnorm layer i as nn.BatchNorm1d computes it per cell: F.batch_norm on the
        [B, G * W] layout (batch statistics and the running ones' update in training, the
        running ones in evaluation); cells without batchnorm keep h."""
        g, b, w = h.shape
        flat = h.transpose(0, 1).reshape(b, g * w)
        out = (
            F.batch_norm(
                flat,
                self.mean[i],
                self.var[i],
                self.gamma[i],
                self.beta[i],
                train,
                BN_MOMENTUM,
                BN_EPS,
            )
            .view(b, g, w)
            .transpose(0, 1)
        )
        return out if self.normed is None else torch.where(self.normed, out, h)


def _norms(net: nn.Sequential, widths: list[int], dtype) -> list[tuple[torch.Tensor, ...]]:
    """Each layer's batchnorm (gamma, beta, running mean, running variance); an MLP without
    batchnorm gets nn.BatchNorm1d's initial ones, which its cell never selects."""
    found = [m for m in net if isinstance(m, nn.BatchNorm1d)]
    if not found:
        found = [nn.BatchNorm1d(w).to(dtype) for w in widths]
    return [(m.weight, m.bias, m.running_mean, m.running_var) for m in found]


def _selections(names: list[str], device) -> list[tuple[nn.Module, torch.Tensor | None]]:
    """The group's activations, each with the [G, 1, 1] mask of the cells that take it (the
    first, computed everywhere, needs none)."""
    distinct = list(dict.fromkeys(names))
    return [
        (
            models.ACTIVATIONS[name](),
            torch.tensor([n == name for n in names], device=device).view(-1, 1, 1),
        )
        for name in distinct
    ]


@functools.lru_cache(maxsize=8)
def _counters(b: int, widths: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For a batch of b: every layer's hashed counters 0..b*width-1 side by side (int32), and
    which layer each position belongs to (int64, [1, 1, positions])."""
    counters = torch.cat([rng.counters32(b * w, device) for w in widths])
    layer_of = torch.cat(
        [torch.full((b * w,), i, dtype=torch.int64, device=device) for i, w in enumerate(widths)]
    )
    return counters, layer_of.view(1, 1, -1)


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
