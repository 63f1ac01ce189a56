"""kill -9 at seeded random moments, then rerun: nothing lost, duplicated or half-written."""
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pandas as pd

from ablate.store import MANIFEST, parquet_files, read_manifest
from conftest import REPO, default_sigint, write_study

KILLS = 20
FACTORS = "dict(activation=['relu', 'sigmoid'], dropout=[0.0, 0.25])"


def command(study, out):
    return [sys.executable, "-m", "ablate", "run", str(study), "--out", str(out), "--deterministic",
            "--max-group", "2"]


def env(data_dir, **extra):
    return {**os.environ, "ABLATE_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO), **extra}


def finish(study, out, data_dir) -> pd.DataFrame:
    done = subprocess.run(command(study, out), env=env(data_dir), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    folder = out / "tiny"
    for f in parquet_files(folder):
        pd.read_parquet(f)  # every file a reader sees is whole
    assert read_manifest(folder)["study"] == "tiny"
    assert not (folder / "_quarantine").exists()
    return pd.read_parquet(folder).sort_values(["cell", "epoch"]).reset_index(drop=True)


def test_kill_9_anywhere_then_rerun_loses_and_duplicates_nothing(tmp_path, data_dir):
    study = write_study(tmp_path, epochs=2, factors=FACTORS)
    start = time.perf_counter()
    reference = finish(study, tmp_path / "ref", data_dir)
    whole = time.perf_counter() - start
    assert reference["cell"].nunique() == 8 and len(reference) == 16
    rng = random.Random(20261123)
    landed, phases = Counter(), ["training", "parquet", "manifest"]
    for i in range(KILLS):
        phase, out = phases[i % 3], tmp_path / f"run{i}"
        point = rng.choice(["written", "renamed"])
        hook = {"parquet": f"parquet:{rng.randint(1, 4)}:{point}", "manifest": f"manifest:1:{point}"}.get(phase)
        proc = subprocess.Popen(command(study, out), env=env(data_dir, **({"ABLATE_TEST_KILL": hook} if hook else {})),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if phase == "training":
            while "training" not in (proc.stdout.readline() or "training"):
                pass  # startup done: the run has begun training
            time.sleep(rng.uniform(0, whole * 0.3))
            proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            landed[f"{phase}:{point}" if hook else phase] += 1
        df = finish(study, out, data_dir)
        assert df["cell"].nunique() == 8 and df.groupby("cell").size().eq(2).all()  # each cell exactly once
        assert df.drop(columns="seconds").equals(reference.drop(columns="seconds")), f"attempt {i} ({phase})"
        assert (out / "tiny" / MANIFEST).is_file()
    print(f"kills landed by phase: {dict(landed)}; {sum(landed.values())} of {KILLS}; "
          "cells lost 0, duplicated 0, corrupt 0")
    assert sum(landed.values()) >= KILLS - 2, dict(landed)
    assert landed["manifest:written"] + landed["manifest:renamed"] > 0
    assert landed["parquet:written"] + landed["parquet:renamed"] > 0 and landed["training"] > 0


def test_ctrl_c_stops_fast_keeps_finished_cells_and_exits_130(tmp_path, data_dir):
    study = write_study(tmp_path, epochs=30, factors=FACTORS)  # long enough to be mid-training
    out = tmp_path / "res"
    proc = subprocess.Popen(command(study, out)[:-2] + ["--max-group", "1"], env=env(data_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    while "training" not in (proc.stdout.readline() or "training"):
        pass
    deadline = time.time() + 60
    while not parquet_files(out / "tiny") and time.time() < deadline:
        time.sleep(0.05)  # wait for the first finished cell
    proc.send_signal(signal.SIGINT)
    sent = time.perf_counter()
    _, err = proc.communicate(timeout=30)
    assert time.perf_counter() - sent < 5
    assert proc.returncode == 130, err
    done = pd.read_parquet(out / "tiny")["cell"].nunique()
    assert f"stopped: {done} of 8 cells done; run the same command to finish" in err
    assert 1 <= done < 8 and "Traceback" not in err
