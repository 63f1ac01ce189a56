"""nox sessions: `tests` (the suite), `quick` (its fast tier), `repro`, `study` (the reference)."""

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
# uv where it is installed (the README's command installs it), else virtualenv and pip. The
# test environment (torch included, about 6 GB) installed in 84.5 s with pip, 21.6 s with uv
# from an empty cache and 2.1 s from a warm one (fresh clones, this 2-core machine, 2026-12-05)
nox.options.default_venv_backend = "uv|virtualenv"


def _env() -> dict:
    """Point ablate at ../shared/datasets when it is there and nothing else was given."""
    shared = ROOT.parent / "shared" / "datasets"
    if "ABLATE_DATA_DIR" not in os.environ and (shared / "MNIST" / "raw").is_dir():
        return {"ABLATE_DATA_DIR": str(shared)}
    return {}


@nox.session
def tests(session):
    """The whole suite, two test files at a time (pytest-xdist; one file's tests stay in one
    process, in order, so a module's fixtures are made once)."""
    session.install("-c", "constraints.txt", "-e", ".[test]")
    # 986 s of pytest one file at a time, 581 s two at a time (2 cores, 2026-12-08)
    parallel = ["-n", "2", "--dist", "loadfile"]
    session.run("pytest", *(session.posargs or ["-q", *parallel]), env=_env())


@nox.session
def quick(session):
    """Every test not marked slow (no subprocess killed, no Ray, no benchmark, no notebook, no
    Monte Carlo calibration): at most 2 minutes on a 2-core machine (41 s there, 2026-12-08)."""
    session.install("-c", "constraints.txt", "-e", ".[test]")
    session.run("pytest", "-q", "-m", "not slow", *session.posargs, env=_env())


@nox.session
def repro(session):
    """Same study twice from scratch with --deterministic: bitwise equal; another --max-group:
    within 1e-4."""
    session.install("-c", "constraints.txt", "-e", ".[test]")
    session.run("pytest", "-q", "-m", "repro", *session.posargs, env=_env())


@nox.session
def study(session):
    """Train the reference study (resumable) and show its results."""
    session.install("-c", "constraints.txt", "-e", ".")
    session.run("ablate", "run", "studies/mnist_mlp.py", *session.posargs, env=_env())
    session.run("ablate", "show", "results/mnist_mlp", env=_env())
