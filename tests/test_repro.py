"""Reproducibility checks (`nox -s repro`): same study, same seeds, the same numbers."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ablate import __version__
from ablate.cli import app
from ablate.readback import MANIFEST
from helpers import write_study

pytestmark = [pytest.mark.repro, pytest.mark.slow]
cli = CliRunner()
FACTORS = "dict(activation=['relu', 'sigmoid'], dropout=[0.0, 0.25])"
VALUES = ["train_loss", "test_loss", "test_acc"]


def run_fresh(tmp_path, out, *args):
    study = write_study(tmp_path, epochs=2, factors=FACTORS)
    r = cli.invoke(app, ["run", str(study), "--out", str(tmp_path / out), "--deterministic", *args])
    assert r.exit_code == 0, r.output
    df = (
        pd.read_parquet(tmp_path / out / "tiny")
        .sort_values(["cell", "epoch"])
        .reset_index(drop=True)
    )
    return df, json.loads((tmp_path / out / "tiny" / MANIFEST).read_text())


def test_two_runs_from_scratch_are_bitwise_equal_and_group_size_changes_nothing_beyond_rounding(
    tmp_path, data_dir
):
    a, manifest = run_fresh(tmp_path, "a")
    b, _ = run_fresh(tmp_path, "b")
    assert len(a) == 16
    assert a.drop(columns="seconds").equals(b.drop(columns="seconds"))
    for col in VALUES:  # bitwise, not just equal as floats
        assert a[col].to_numpy().tobytes() == b[col].to_numpy().tobytes()
    alone, _ = run_fresh(tmp_path, "alone", "--max-group", "1")
    assert (alone["cell"] == a["cell"]).all()
    for col in ("train_loss", "test_loss"):
        np.testing.assert_allclose(alone[col], a[col], rtol=1e-4)
    assert np.abs(alone["test_acc"] - a["test_acc"]).max() <= 1 / 10000
    run = manifest["runs"][-1]
    assert run["torch"] == torch.__version__ and run["ablate"] == __version__ and run["python"]
    assert run["device"].startswith("cpu") and run["deterministic"] is True
