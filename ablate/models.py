"""Model builders whose shape follows the config, with init and dropout drawn from the cell's seed."""
from __future__ import annotations

import math

import torch
from torch import nn

from . import rng

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class Dropout(nn.Module):
    """Inverted dropout whose masks are rng.uniform24(key(cell, layer, step)): a cell's masks
    are the same alone or fused, on any device. `step` counts training forwards."""

    def __init__(self, p: float, seed: int, layer: int):
        super().__init__()
        self.p, self.key, self.step = p, rng.key(seed, rng.DROPOUT, layer), 0

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        k = rng.key(self.key, self.step)
        self.step += 1
        keep = rng.uniform24(k, x.numel(), x.device).view(x.shape) >= rng.threshold(self.p)
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self):
        return f"p={self.p}"


def mlp(config: dict, in_shape: tuple, classes: int, seed: int) -> nn.Sequential:
    """Flatten, then per hidden width: Linear, BatchNorm (optional), activation, Dropout (optional)."""
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


BUILDERS = {"mlp": mlp}


def build(model, config: dict, in_shape: tuple, classes: int, seed: int) -> nn.Module:
    """The cell's model on the CPU, its init drawn from the cell's seed alone (the global RNG
    is forked, so nothing outside changes); the caller moves it to the device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.key(seed, rng.INIT))
        if callable(model):
            net = model(dict(config))
            if not isinstance(net, nn.Module):
                raise TypeError(f"the model callable returned {type(net).__name__}, expected an nn.Module")
        else:
            net = BUILDERS[model](config, in_shape, classes, seed)
        init_(net, config["init"])
    return net
