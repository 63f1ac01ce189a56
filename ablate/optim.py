"""Each optimizer name's one entry: its torch.optim class and arguments, and its fused rule.

The plain path (loop.Plain) builds `Rule.torch(params, **Rule.args(config))`; the fused path
(fused.Optimizer) applies `Rule.step` to a group's [G, ...] parameters with per-cell lr,
momentum and weight decay, the same sums as torch.optim takes for each cell alone (checked in
fp64 for every name: tests/test_optim.py). keys.OPTIMIZERS lists the same names, in this order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import AblateError

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's and AdamW's defaults


@dataclass(frozen=True)
class Hyper:
    """One [G, ...] parameter's per-cell lr, momentum and weight decay, shaped to broadcast over
    it, and what the group's configs say of them (read on the host: no device sync)."""

    lr: torch.Tensor
    momentum: torch.Tensor
    wd: torch.Tensor
    any_momentum: bool
    any_wd: bool
    shared_momentum: float | None  # the group's one momentum, or None where cells differ


State = tuple[torch.Tensor, ...]  # a parameter's optimizer buffers, as many as Rule.buffers says


@dataclass(frozen=True)
class Rule:
    """One optimizer: `torch` and `args` (config -> its keyword arguments) for the plain path;
    `buffers` (given whether any cell has momentum) and `step` (parameter, gradient, buffers,
    Hyper, step count from 1) for the fused path; `product`, where the step may run inside the
    backward (fused.SGDLinear), takes the step given the gradient as a batched product a @ b,
    which is then never stored; None where it may not."""

    torch: type[torch.optim.Optimizer]
    args: Callable[[dict], dict]
    buffers: Callable[[bool], int]
    step: Callable[[torch.Tensor, torch.Tensor, State, Hyper, int], None]
    product: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, State, Hyper], None] | None


def sgd_step(p: torch.Tensor, g: torch.Tensor, state: State, h: Hyper, t: int) -> None:
    """torch.optim.SGD's sums: m = momentum * m + (g + wd * p); p -= lr * m; g is overwritten."""
    if h.any_wd:
        g = g.addcmul_(h.wd, p)
    if h.any_momentum:  # m = g + momentum * m in one pass
        g = torch.addcmul(g, state[0], h.momentum, out=state[0])
    p.addcmul_(h.lr, g, value=-1)


def sgd_product(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, state: State, h: Hyper):
    """sgd_step with the gradient a @ b: the product goes straight into the momentum buffer (a
    GEMM with beta = the momentum when the cells share one; else the buffer is scaled first), or
    with no momentum into the weights (b scaled by each cell's -lr), so a [G, in, out] gradient
    is never written and read back. On 2 CPU cores that took a reference MLP step for 10 cells
    from 13.1 to 12.0 ms (benchmarks/sgd_step.py), memory traffic the bound. The same sums as
    torch.optim.SGD's, in another order."""
    if not h.any_momentum:  # p - lr * (ab + wd * p) = p * (1 - lr * wd) - lr * ab
        if h.any_wd:
            p.mul_(1 - h.lr * h.wd)
        p.baddbmm_(a, b * -h.lr)
        return
    m = state[0]
    if h.shared_momentum is not None:
        m.baddbmm_(a, b, beta=h.shared_momentum)
    else:
        m.mul_(h.momentum).baddbmm_(a, b)
    if h.any_wd:
        m.addcmul_(h.wd, p)
    p.addcmul_(h.lr, m, value=-1)


def nesterov_step(p: torch.Tensor, g: torch.Tensor, state: State, h: Hyper, t: int) -> None:
    """torch.optim.SGD(nesterov=True)'s sums: g += wd * p; m = momentum * m + g;
    p -= lr * (g + momentum * m). A cell whose momentum is 0 takes plain SGD's step."""
    if h.any_wd:
        g = g.addcmul_(h.wd, p)
    if h.any_momentum:
        state[0].mul_(h.momentum).add_(g)
        g = g.addcmul_(h.momentum, state[0])
    p.addcmul_(h.lr, g, value=-1)


def adam_step(p: torch.Tensor, g: torch.Tensor, state: State, h: Hyper, t: int) -> None:
    """torch.optim.Adam's sums (weight decay added to the gradient); g is overwritten."""
    if h.any_wd:
        g = g.addcmul_(h.wd, p)
    _adam(p, g, state, h.lr, t)


def adamw_step(p: torch.Tensor, g: torch.Tensor, state: State, h: Hyper, t: int) -> None:
    """torch.optim.AdamW's sums: weight decay decoupled from the gradient, p *= 1 - lr * wd
    first, then Adam's step."""
    if h.any_wd:
        p.mul_(1 - h.lr * h.wd)
    _adam(p, g, state, h.lr, t)


def _adam(p: torch.Tensor, g: torch.Tensor, state: State, lr: torch.Tensor, t: int) -> None:
    m1, m2 = state
    b1, b2 = ADAM_BETAS
    m1.lerp_(g, 1 - b1)
    m2.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (m2.sqrt() / math.sqrt(1 - b2**t)).add_(ADAM_EPS)
    p.sub_(lr / (1 - b1**t) * m1 / denom)


def _sgd_args(cfg: dict) -> dict:
    return dict(lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])


def _nesterov_args(cfg: dict) -> dict:
    # torch refuses nesterov=True without momentum; its sums with momentum 0 are plain SGD's
    return {**_sgd_args(cfg), "nesterov": cfg["momentum"] > 0}


def _adam_args(cfg: dict) -> dict:  # momentum: no argument of Adam's
    return dict(lr=cfg["lr"], betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=cfg["weight_decay"])


def _momentum_buffer(any_momentum: bool) -> int:
    return int(any_momentum)


def _two_moments(any_momentum: bool) -> int:
    return 2


RULES: dict[str, Rule] = {
    "sgd": Rule(torch.optim.SGD, _sgd_args, _momentum_buffer, sgd_step, sgd_product),
    "adam": Rule(torch.optim.Adam, _adam_args, _two_moments, adam_step, None),
    "adamw": Rule(torch.optim.AdamW, _adam_args, _two_moments, adamw_step, None),
    "sgd_nesterov": Rule(torch.optim.SGD, _nesterov_args, _momentum_buffer, nesterov_step, None),
}


def rule(name: str) -> Rule:
    """The optimizer's entry; a name RULES lacks is a one-line AblateError."""
    if name not in RULES:
        raise AblateError(f"unknown optimizer {name!r}; expected one of {', '.join(RULES)}")
    return RULES[name]


def build(params, cfg: dict) -> torch.optim.Optimizer:
    """The cell's torch.optim optimizer over `params`, as its config says."""
    entry = rule(cfg["optimizer"])
    return entry.torch(params, **entry.args(cfg))
