"""Shared fixtures: the real datasets folder and tiny study files."""

import os
import signal
import textwrap
from pathlib import Path

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
def data_dir() -> Path:
    d = _data_dir()
    if d is None:
        pytest.skip("no datasets folder: set ABLATE_DATA_DIR to a folder holding MNIST/raw/*.gz")
    os.environ["ABLATE_DATA_DIR"] = str(d)
    return d


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
