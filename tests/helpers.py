"""What several test files share: tiny study files, stand-in data, subprocesses, fused groups."""

import gzip
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ablate import fused, loop
from ablate.study import Study, cells, validate

REPO = Path(__file__).resolve().parents[1]


def default_sigint():
    """For subprocesses: a shell's background job inherits SIGINT ignored, and Python then never
    raises KeyboardInterrupt; give the child the default, as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # nohup-like runners ignore it; a terminal does not
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def env(data_dir, **extra) -> dict:
    """A subprocess's environment: this checkout's ablate on the datasets under data_dir."""
    return {**os.environ, "ABLATE_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO), **extra}


def command(study, out) -> list[str]:
    """`ablate run` of a study in a subprocess, deterministic, in groups of 2."""
    run = [sys.executable, "-m", "ablate", "run", str(study), "--out", str(out)]
    return [*run, "--deterministic", "--max-group", "2"]


TINY = """
from ablate import Claim, Study

study = Study(
    name={name!r},
    dataset="mnist",
    base=dict(hidden=(32,), activation="relu", dropout=0.0, lr=0.05, momentum=0.5,
              batch_size=64, epochs={epochs}, train_subset=512),
    factors={factors},
    seeds={seeds},
    design={design!r},
    claims=[Claim(where=dict(activation="relu"), value=0.8, source="tiny")],
)
"""


def write_study(
    folder: Path,
    name="tiny",
    epochs=1,
    seeds=2,
    design="grid",
    factors="dict(activation=['relu', 'sigmoid'], dropout=[0.0, 0.25])",
    body=None,
) -> Path:
    path = folder / f"{name}.py"
    text = (
        body
        if body is not None
        else TINY.format(name=name, epochs=epochs, seeds=seeds, design=design, factors=factors)
    )
    path.write_text(textwrap.dedent(text))
    return path


# A study of its own dataset and model: three Gaussian blobs in 20 dimensions, trained in seconds
BLOBS_STUDY = """
import numpy as np
import torch
from ablate import Study

CALLS = []

def blobs(config):
    # three Gaussian blobs in 20 dimensions; `noise` of the training labels are redrawn
    CALLS.append(dict(config))
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 2, (3, 20))
    def split(n):
        y = rng.integers(0, 3, n)
        return (centres[y] + rng.normal(0, 1, (n, 20))).astype(np.float32), y
    train_x, train_y = split(600)
    flip = rng.random(600) < config["noise"]
    train_y = np.where(flip, rng.integers(0, 3, 600), train_y)
    test_x, test_y = split(300)
    return train_x, train_y, torch.from_numpy(test_x), torch.from_numpy(test_y)

def net(config):
    return torch.nn.Sequential(torch.nn.Linear(20, config["width"]), torch.nn.ReLU(),
                               torch.nn.Linear(config["width"], 3))

study = Study(
    name="blobs",
    dataset=blobs,
    model=net,
    keys=dict(width=16, noise=0.0),
    base=dict(epochs=2, lr=0.1, batch_size=50, normalize=True),
    factors=dict(width=[16, 64], noise=[0.0, 0.3]),
    seeds=2,
)
"""


def frame(values: dict, factors=("a", "b")) -> pd.DataFrame:
    """values: (levels..., seed) -> final metric; one row per cell at epoch 1."""
    rows = []
    for (*levels, seed), y in values.items():
        lv = dict(zip(factors, levels, strict=True))
        rows.append(
            dict(
                study="s",
                cell=json.dumps([*levels, seed]),
                seed=seed,
                **lv,
                epoch=1,
                train_loss=0.1,
                test_loss=0.1,
                test_acc=y,
                seconds=1.0,
                status="ok",
                config=json.dumps(lv),
            )
        )
    return pd.DataFrame(rows)


STAND_INS = "STAND-INS"  # a file that marks a folder of stand_ins


IDX_FILES = {  # torchvision's names: 60,000 training and 10,000 test images of 28x28
    "train-images-idx3-ubyte": 60_000,
    "train-labels-idx1-ubyte": 60_000,
    "t10k-images-idx3-ubyte": 10_000,
    "t10k-labels-idx1-ubyte": 10_000,
}


def stand_ins(root: Path) -> Path:
    """MNIST- and Fashion-MNIST-shaped IDX files made from scikit-learn's 8x8 digits (shipped,
    no download): each digit scaled to 24x24, placed at a random offset in a 28x28 frame with
    random contrast and noise; training images from the first half of the digits, test images
    from the second, as the digits example splits them. They are learnable as MNIST is (an MLP
    reaches about 90% in a few hundred steps), so tests check training on them, not MNIST's
    numbers. Fashion-MNIST's are the same digits mirrored and drawn from another seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    big = np.kron(digits.images, np.ones((3, 3))) / 16  # 8x8 of 0..16 -> 24x24 of 0..1
    for folder, seed, mirror in (("MNIST", 0, False), ("FashionMNIST", 1, True)):
        rng = np.random.default_rng(seed)
        raw = root / folder / "raw"
        raw.mkdir(parents=True)
        for split, half in (("train", slice(0, 898)), ("t10k", slice(898, None))):
            n = IDX_FILES[f"{split}-images-idx3-ubyte"]
            pick = rng.integers(0, len(big[half]), n)
            images = np.zeros((n, 28, 28))
            offsets = rng.integers(1, 4, (n, 2))  # shifted 1-3 pixels
            for row, col in np.unique(offsets, axis=0):
                at = (offsets == (row, col)).all(1)
                images[at, row : row + 24, col : col + 24] = big[half][pick[at]]
            images = images * rng.uniform(0.7, 1.0, (n, 1, 1)) + rng.uniform(0, 0.05, (n, 28, 28))
            images = np.clip(images * 255, 0, 255).astype(np.uint8)
            if mirror:
                images = images[:, :, ::-1]
            labels = digits.target[half][pick].astype(np.uint8)
            _idx(raw / f"{split}-images-idx3-ubyte.gz", images)
            _idx(raw / f"{split}-labels-idx1-ubyte.gz", labels)
    (root / STAND_INS).write_text("made by tests/helpers.py:stand_ins\n")
    return root


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + np.ascontiguousarray(array).tobytes())


# The fused tests' groups and study models (tests/test_fused.py on the CPU, test_cuda.py on a GPU)
BASE = dict(
    hidden=(64, 32),
    activation="relu",
    lr=0.05,
    momentum=0.5,
    batch_size=50,
    epochs=1,
    train_subset=5000,
)
VARIANTS = {
    "sgd": {},
    "dropout+flip+norm+bn": dict(dropout=0.3, hflip=True, normalize=True, batchnorm=True),
    "adam+bn+sigmoid": dict(optimizer="adam", lr=0.002, batchnorm=True, activation="sigmoid"),
}


def group(precision, extra, seeds=2):
    base = {**BASE, **extra, "precision": precision}
    lr = base["lr"]
    st = validate(
        Study(
            name="t",
            dataset="mnist",
            base=base,
            seeds=seeds,
            factors=dict(lr=[lr, 2 * lr], weight_decay=[0.0, 1e-3]),
        )
    )
    return cells(st)


def products_dtypes(cs, data) -> set:
    """The dtypes of every layer's product inside a fused group's training forward, run as the
    loop runs it (under loop.autocast): bf16 only where autocast reached Stack's baddbmm."""
    stack = fused.group(cs, data, data.train_x.device)
    seen, linear = set(), stack.linear

    def recording(i, h):
        out = linear(i, h)
        seen.add(out.dtype)
        return out

    stack.linear = recording
    cfgs = [c.config for c in cs]
    x = loop.prepare(data, data.train_x[:4], loop.normalization(cfgs, data.train_x.device), None)
    stack.begin_epoch(0, 1)
    with loop.autocast(cs[0].config["precision"], data.train_x.device):
        stack.forward(x, True, torch.zeros(1, dtype=torch.int64, device=data.train_x.device))
    return seen


CNN = (
    "conv:6:5",
    "batchnorm",
    "maxpool:2",
    "act",
    "conv:8:3",
    "dropout2d:0.3",
    "act",
    "flatten",
    "fc:32",
    "act",
    "dropout:0.4",
)


def cnn_group(precision, optimizer):
    base = dict(
        layers=CNN,
        optimizer=optimizer,
        lr=0.02 if optimizer == "sgd" else 0.002,
        momentum=0.5,
        batch_size=32,
        epochs=1,
        train_subset=640,
        precision=precision,
        hflip=True,
    )
    st = validate(
        Study(
            name="t",
            dataset="mnist",
            model="cnn",
            base=base,
            seeds=[3],
            factors=dict(normalize=[False, True], weight_decay=[0.0, 1e-3]),
        )
    )
    return cells(st)


# A study's own modules, fused through torch.func on a GPU, checked here on the CPU in fp64
# (digits: 8x8 images, 10 classes, 899 test images, so each check takes seconds).
class Residual(torch.nn.Module):
    """MLP-like, with a skip connection and a LayerNorm (no batchnorm, no dropout)."""

    def __init__(self, width: int):
        super().__init__()
        self.inp, self.mid = torch.nn.Linear(64, width), torch.nn.Linear(width, width)
        self.norm, self.out = torch.nn.LayerNorm(width), torch.nn.Linear(width, 10)

    def forward(self, x):
        hidden = torch.relu(self.inp(x.flatten(1)))
        return self.out(self.norm(hidden + torch.tanh(self.mid(hidden))))


def residual(config):
    return Residual(24)


def small_cnn(config):
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 3 * 3, 10),
    )


class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x):
        logits = self.linear(x.flatten(1))
        return logits if x.sum() > 0 else -logits  # Python control flow on a tensor's value


def branchy(config):
    return Branchy()


def own_group(model):
    base = dict(lr=0.05, momentum=0.5, batch_size=32, epochs=2, train_subset=320, precision="fp64")
    factors = dict(lr=[0.05, 0.1], weight_decay=[0.0, 1e-3])
    st = validate(
        Study(name="t", dataset="digits", model=model, base=base, factors=factors, seeds=2)
    )
    return cells(st)
