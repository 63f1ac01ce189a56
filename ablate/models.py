"""Model builders whose shape follows the config; init and dropout drawn from the cell's seed."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import rng
from .errors import AblateError

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class Dropout(nn.Module):
    """Inverted dropout whose masks are rng.uniform24(key(cell, layer, step)): a cell's masks
    are the same alone or fused, on any device. `step` counts training forwards."""

    def __init__(self, p: float, seed: int, layer: int):
        super().__init__()
        self.p, self.step = p, 0
        # a buffer, not an int: stacked with the others, each cell of a vmapped group keeps its own
        self.register_buffer(
            "key", torch.tensor(rng.key(seed, rng.DROPOUT, layer)), persistent=False
        )

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        k = rng.key(self.key, self.step)
        self.step += 1
        keep = rng.uniform24(k, x.numel(), x.device).view(x.shape) >= rng.threshold(self.p)
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self):
        return f"p={self.p}"


class Dropout2d(Dropout):
    """Zeroes whole channels: one draw per (sample, channel), from the same seeded stream."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        k = rng.key(self.key, self.step)
        self.step += 1
        n, c = x.shape[:2]
        keep = rng.uniform24(k, n * c, x.device).view(n, c, 1, 1) >= rng.threshold(self.p)
        return x * keep * (1.0 / (1.0 - self.p))


def mlp(config: dict, in_shape: tuple, classes: int, seed: int) -> nn.Sequential:
    """Flatten, then per hidden width: Linear, BatchNorm (optional), activation, Dropout
    (optional)."""
    layers, width = [nn.Flatten()], math.prod(in_shape)
    for i, h in enumerate(config["hidden"]):
        layers.append(nn.Linear(width, h))
        if config["batchnorm"]:
            layers.append(nn.BatchNorm1d(h))
        layers.append(ACTIVATIONS[config["activation"]]())
        if config["dropout"] > 0:
            layers.append(Dropout(config["dropout"], seed, i))
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def init_(model: nn.Module, scheme: str) -> None:
    """Re-draw the weights of every Linear and Conv layer; biases keep PyTorch's default."""
    fn = {
        "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
        "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
        "xavier_uniform": nn.init.xavier_uniform_,
    }.get(scheme)
    if fn is None:
        return
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fn(m.weight)


@torch.no_grad()
def _out_shape(layers: list[nn.Module], in_shape: tuple) -> torch.Size:
    """Shape of one zero image after `layers`; dropout and batchnorm keep shapes and are skipped,
    so no mask is drawn and no running statistic moves."""
    x = torch.zeros(1, *in_shape)
    for m in layers:
        if not isinstance(m, (Dropout, nn.BatchNorm1d, nn.BatchNorm2d)):
            x = m(x)
    return x.shape


def cnn(config: dict, in_shape: tuple, classes: int, seed: int) -> nn.Sequential:
    """The `layers` config as modules (see study.KEYS), then a Linear classifier; shapes are
    found by passing a zero image through the layers built so far."""
    layers: list[nn.Module] = []
    shape = lambda: _out_shape(layers, in_shape)  # noqa: E731
    drops = 0
    for spec in config["layers"]:
        kind, *args = spec.split(":")
        if kind == "conv":
            vals = [int(a) for a in args]
            out, k, stride, pad = vals + [1, 0][len(vals) - 2 :]
            layers.append(nn.Conv2d(shape()[1], out, k, stride, pad))
        elif kind == "maxpool":
            layers.append(nn.MaxPool2d(int(args[0])))
        elif kind == "act":
            layers.append(ACTIVATIONS[config["activation"]]())
        elif kind == "batchnorm":
            size = shape()
            layers.append(nn.BatchNorm2d(size[1]) if len(size) == 4 else nn.BatchNorm1d(size[1]))
        elif kind in ("dropout", "dropout2d"):
            layers.append(
                (Dropout2d if kind == "dropout2d" else Dropout)(float(args[0]), seed, drops)
            )
            drops += 1
        elif kind == "flatten":
            layers.append(nn.Flatten())
        elif kind == "fc":
            if len(shape()) > 2:
                layers.append(nn.Flatten())
            layers.append(nn.Linear(shape()[1], int(args[0])))
    if len(shape()) > 2:
        layers.append(nn.Flatten())
    layers.append(nn.Linear(shape()[1], classes))
    return nn.Sequential(*layers)


def linear(config: dict, in_shape: tuple, classes: int, seed: int) -> nn.Sequential:
    """The perceptron: one Linear layer from the flattened input to the classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), classes))


@dataclass(frozen=True)
class Kind:
    """A built-in model kind: `build(config, in_shape, classes, dropout seed)` -> its module, and
    the config key that shapes it, named when it does not fit a dataset (None: none does)."""

    build: Callable[[dict, tuple, int, int], nn.Module]
    shape_key: str | None


# keys.MODELS lists the same names, in this order
KINDS: dict[str, Kind] = {
    "mlp": Kind(mlp, "hidden"),
    "cnn": Kind(cnn, "layers"),
    "linear": Kind(linear, None),
}


def kind(name: str) -> Kind:
    """The model kind's entry; a name KINDS lacks is a one-line AblateError."""
    if name not in KINDS:
        raise AblateError(f"unknown model {name!r}; expected one of {', '.join(KINDS)}")
    return KINDS[name]


class OutputError(ValueError):
    """A study's own model whose output is not one logit per class."""


@torch.no_grad()
def check_output(net: nn.Module, name: str, in_shape: tuple, classes: int) -> None:
    """Pass two zero images through `net` in eval mode (no batchnorm statistic moves, no dropout
    mask is drawn): logits of any shape but [2, classes] would train silently on a wrong task,
    as 50 outputs on 10 classes do (cross-entropy accepts them)."""
    p = next(net.parameters(), None)
    x = torch.zeros(
        2,
        *in_shape,
        dtype=p.dtype if p is not None else torch.float32,
        device=p.device if p is not None else "cpu",
    )
    was = net.training
    try:
        out = net.eval()(x)
    finally:
        net.train(was)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != (2, classes):
        raise OutputError(
            f"model {name} returns {got} for a batch of shape {tuple(x.shape)}; "
            f"the dataset has {classes} classes, so expected (2, {classes})"
        )


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def build(
    model, config: dict, in_shape: tuple, classes: int, seed: int, dropout_seed: int | None = None
) -> nn.Module:
    """The cell's model on the CPU, its init drawn from `seed` alone (the global RNG is forked,
    so nothing outside changes), its dropout masks keyed by `dropout_seed` (default `seed`:
    Cell.seed_for tells them apart); the caller moves it to the device. A study's own model is
    checked on a zero batch (check_output), inside the fork."""
    dropout_seed = seed if dropout_seed is None else dropout_seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.key(seed, rng.INIT))
        if callable(model):
            net = model(dict(config))
            if not isinstance(net, nn.Module):
                raise TypeError(
                    f"the model callable returned {type(net).__name__}, expected an nn.Module"
                )
        else:
            net = kind(model).build(config, in_shape, classes, dropout_seed)
        init_(net, config["init"])
        if callable(model):
            check_output(net, repr(getattr(model, "__qualname__", repr(model))), in_shape, classes)
    return net
