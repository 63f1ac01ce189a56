"""Shared fixtures: the real datasets folder (or stand-ins) and what its MNIST files hold."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, STAND_INS, stand_ins


def _data_dir() -> Path | None:
    given = os.environ.get("ABLATE_DATA_DIR")
    if given:
        assert (Path(given) / "MNIST" / "raw").is_dir(), (
            f"ABLATE_DATA_DIR={given} holds no MNIST/raw"
        )
        return Path(given)
    guess = REPO.parent / "shared" / "datasets"
    return guess if (guess / "MNIST" / "raw").is_dir() else None


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
