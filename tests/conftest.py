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


# What the published files hold: their first labels, and the normalisation constants every
# MNIST tutorial quotes (Fashion-MNIST's mean 0.2860)
PUBLISHED = dict(first_labels=[5, 0, 4, 1, 9, 2, 1, 3, 1, 4], mean=0.1307, std=0.3081)


@pytest.fixture(scope="session")
def mnist_facts(data_dir) -> dict:
    """What the MNIST files under data_dir hold, for tests of the loader: the published values for
    the real files, else the stand-ins' own, decoded here with NumPy alone (the reference)."""
    if not (data_dir / STAND_INS).exists():
        return dict(PUBLISHED, fashion_mean=0.2860, tolerance=1e-4)
    facts = {}
    for folder, key in (("MNIST", "mean"), ("FashionMNIST", "fashion_mean")):
        raw = data_dir / folder / "raw"
        images = _read(raw / "train-images-idx3-ubyte.gz", 16).astype(np.float64) / 255
        facts[key] = images.mean()
        if folder == "MNIST":
            facts["std"] = images.std(ddof=1)
            facts["first_labels"] = _read(raw / "train-labels-idx1-ubyte.gz", 8)[:10].tolist()
    return dict(facts, tolerance=1e-4)


def _read(path: Path, header: int) -> np.ndarray:
    return np.frombuffer(gzip.decompress(path.read_bytes())[header:], dtype=np.uint8)


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
    (root / STAND_INS).write_text("made by tests/conftest.py:stand_ins\n")
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
