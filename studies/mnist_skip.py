# studies/mnist_skip.py: your own idea, on real data. Does a skip connection let a deep, narrow
# MLP train on MNIST, and does width change the answer? Two keys of the study's own (width, skip),
# a model callable that reads them, every other key ablate's.
import torch
from torch import nn

from ablate import Key, Study

DEPTH = 8  # hidden layers: deep enough that a plain sigmoid stack trains slowly


class DeepMLP(nn.Module):
    def __init__(self, width: int, skip: bool):
        super().__init__()
        self.skip = skip
        self.inp = nn.Linear(784, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(DEPTH - 1))
        self.out = nn.Linear(width, 10)

    def forward(self, x):
        h = torch.sigmoid(self.inp(x.flatten(1)))
        for layer in self.hidden:
            step = torch.sigmoid(layer(h))
            h = h + step if self.skip else step
        return self.out(h)


def deep_mlp(config):
    return DeepMLP(config["width"], config["skip"])


study = Study(
    name="mnist_skip",
    dataset="mnist",
    model=deep_mlp,
    keys=dict(
        width=Key(64, lo=1, hi=4096, help="units in each hidden layer"),
        skip=Key(False, help="add each layer's output to its input"),
    ),
    base=dict(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=64, epochs=3, train_subset=12000),
    factors=dict(skip=[False, True], width=[64, 256]),
    seeds=5,
)
