"""Shared fixtures: the real datasets folder and tiny study files."""

import gzip
import os
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path | None:
    given = os.environ.get("ABLATE_DATA_DIR")
    if given:
        assert (Path(given) / "MNIST" / "raw").is_dir(), (
            f"ABLATE_DATA_DIR={given} holds no MNIST/raw"
        )
        return Path(given)
    guess = REPO.parent / "shared" / "datasets"
    return guess if (guess / "MNIST" / "raw").is_dir() else None


def default_sigint():
    """For subprocesses: a shell's background job inherits SIGINT ignored, and Python then never
    raises KeyboardInterrupt; give the child the default, as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(
        signal.SIGHUP, signal.SIG_DFL
    )  # nohup-like runners ignore it; a terminal does not


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """The real MNIST and Fashion-MNIST files where this machine has them; elsewhere stand-ins
    in the same IDX files (stand_ins), so that no test skips on a fresh clone."""
    d = _data_dir() or stand_ins(tmp_path_factory.mktemp("datasets"))
    os.environ["ABLATE_DATA_DIR"] = str(d)
    return d


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
            for i, (row, col) in enumerate(rng.integers(0, 5, (n, 2))):  # shifted 0-4 pixels
                images[i, row : row + 24, col : col + 24] = big[half][pick[i]]
            images = images * rng.uniform(0.6, 1.0, (n, 1, 1)) + rng.uniform(0, 0.1, (n, 28, 28))
            images = np.clip(images * 255, 0, 255).astype(np.uint8)
            if mirror:
                images = images[:, :, ::-1]
            labels = digits.target[half][pick].astype(np.uint8)
            _idx(raw / f"{split}-images-idx3-ubyte.gz", images)
            _idx(raw / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + np.ascontiguousarray(array).tobytes())


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
