"""--executor ray on a local Ray: the same values as in-process, killed workers, Ctrl-C, failures"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ablate import runner, testhooks
from ablate.cli import app
from ablate.executor import Progress, RunOptions
from ablate.study import cells
from ablate.studyfile import load, override
from helpers import BLOBS_STUDY, REPO, default_sigint, write_study

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a Ray instance started and stopped by each test

EIGHT = "dict(activation=['relu', 'sigmoid'], lr=[0.05, 0.1])"  # x 2 seeds: 8 cells
VALUES = ["cell", "seed", "epoch", "train_loss", "test_loss", "test_acc", "status", "config"]


@pytest.fixture(autouse=True)
def no_ray_left():
    yield
    if ray.is_initialized():
        ray.shutdown()


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def values(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    return df[VALUES].sort_values(["cell", "epoch"]).reset_index(drop=True)


def descendants(root: int) -> dict[int, str]:
    """The processes below `root` by pid, with their command lines (Ray retitles a busy worker
    `ray::<task>`); other users' or tests' Ray processes are never matched."""
    parent, cmds = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmds[int(d.name)] = (
                (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except (OSError, IndexError, ValueError):
            continue
    found, todo = {}, [root]
    while todo:
        p = todo.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in found:
                found[child] = cmds.get(child, "")
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def test_ray_stores_the_same_values_as_in_process(tmp_path, data_dir):
    study = write_study(tmp_path, epochs=2, factors=EIGHT)
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # as each Ray worker, which gets 1 CPU: a sum's order may follow threads
    try:
        local = cli(
            "run", study, "--out", tmp_path / "local", "--max-group", "2", "--deterministic"
        )
    finally:
        torch.set_num_threads(threads)
    assert local.exit_code == 0, local.output
    through_ray = cli(
        "run",
        study,
        "--out",
        tmp_path / "ray",
        "--max-group",
        "2",
        "--deterministic",
        "--executor",
        "ray",
    )
    assert through_ray.exit_code == 0, through_ray.output
    assert "on ray, local Ray instance: " in " ".join(through_ray.stdout.split())
    assert not ray.is_initialized()  # the run stopped the instance it started
    a, b = values(tmp_path / "local" / "tiny"), values(tmp_path / "ray" / "tiny")
    assert len(a) == 16 and a["cell"].nunique() == 8
    pd.testing.assert_frame_equal(a, b)  # bitwise: same groups, same kernels, one writer
    assert sorted(p.name for p in (tmp_path / "ray" / "tiny").glob("*.parquet")) == sorted(
        p.name for p in (tmp_path / "local" / "tiny").glob("*.parquet")
    )


def test_a_worker_killed_mid_group_is_retried_and_every_cell_lands_once(tmp_path, data_dir):
    study = override(load(write_study(tmp_path, epochs=3, factors=EIGHT)), ["train_subset=2048"])
    runner.run(study, RunOptions(tmp_path / "local", max_group=2, deterministic=True))
    killed, stop = [], threading.Event()

    class Seen(Progress):  # epoch events travel from the workers to the driver's progress
        epochs = []

        def epoch(self, cell, epoch, loss):
            self.epochs.append((cell.id, epoch))

    seen = Seen()

    def busy() -> list[int]:  # Ray titles a worker after the task it runs
        return [
            pid
            for pid, cmd in descendants(os.getpid()).items()
            if cmd.startswith("ray::_train_group")
        ]

    def killer():  # SIGKILL the first worker seen training a group, a moment into it
        while not stop.is_set():
            if pids := busy():
                time.sleep(0.1)
                if pids[0] in busy():
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                    return
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        ray_run = RunOptions(tmp_path / "ray", None, 2, True, executor="ray", progress=seen)
        summary = runner.run(study, ray_run)
    finally:
        stop.set()
        thread.join()
    assert killed, "no worker was seen training"
    assert {(c, e) for c, e in seen.epochs} == {(c.id, e) for c in cells(study) for e in (1, 2, 3)}
    assert summary.trained == 8 and summary.failed == []
    pd.testing.assert_frame_equal(
        values(tmp_path / "local" / "tiny"), values(tmp_path / "ray" / "tiny")
    )


DIES = """
import os, signal
import torch.nn as nn
from ablate import Study

def model(config):  # lr 0.1 kills its worker every time, as a segfaulting extension would
    if config["lr"] == 0.1:
        os.kill(os.getpid(), signal.SIGKILL)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

study = Study(name="dies", dataset="mnist", model=model,
              base=dict(epochs=1, train_subset=256, lr=0.05),
              factors=dict(lr=[0.05, 0.1]), seeds=1)
"""


def test_a_group_whose_worker_always_dies_is_recorded_not_retried_forever(tmp_path, data_dir):
    result = cli(
        "run",
        write_study(tmp_path, body=DIES),
        "--out",
        tmp_path / "res",
        "--max-group",
        "1",
        "--executor",
        "ray",
    )
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert "a group of 1 cells failed and stays untrained" in said and "after 3 retries" in said
    assert (
        "1 cells failed (warnings above) and were not stored; run the same command to retry them"
        in said
    )
    df = pd.read_parquet(
        tmp_path / "res" / "dies"
    )  # the study's own code went to the workers by value
    assert df["cell"].nunique() == 1 and (df["lr"] == 0.05).all()


def test_out_of_memory_in_a_worker_splits_the_group(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv(testhooks.OOM_ABOVE, "2")  # set before Ray starts, so its workers inherit it
    result = cli(
        "run",
        write_study(tmp_path),
        "--out",
        tmp_path / "res",
        "--max-group",
        "4",
        "--executor",
        "ray",
    )
    assert result.exit_code == 0, result.output
    assert "a group of 4 cells ran out of worker memory; retrying as 2 + 2" in " ".join(
        result.stdout.split()
    )
    assert pd.read_parquet(tmp_path / "res" / "tiny")["cell"].nunique() == 8


@pytest.mark.parametrize(
    "sig, group, code", [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)]
)
def test_ctrl_c_or_sigterm_keeps_finished_cells_and_stops_the_ray_it_started(
    tmp_path, data_dir, sig, group, code
):
    # a terminal's Ctrl-C reaches the process group; `kill` sends SIGTERM to the driver alone
    # (before: Ray's C++ handler dumped a stack and exited 1)
    study = write_study(tmp_path, epochs=6, factors=EIGHT)
    # a terminal's Ctrl-C reaches the whole foreground process group: the driver and what it started
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ablate",
            "run",
            str(study),
            "--out",
            str(tmp_path / "res"),
            "--max-group",
            "1",
            "--executor",
            "ray",
        ],
        cwd=REPO,
        start_new_session=True,
        preexec_fn=default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    res, deadline = tmp_path / "res" / "tiny", time.monotonic() + 120
    while not list(res.glob("*.parquet")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert list(res.glob("*.parquet")) and proc.poll() is None, (
        "no group finished while the run went on"
    )
    started = descendants(proc.pid)  # before the signal: once the driver exits they are re-parented
    assert any("raylet" in cmd for cmd in started.values())
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stdout + stderr
    assert "stopped:" in stderr and "run the same command to finish" in stderr
    assert "Traceback" not in stderr
    kept = pd.read_parquet(res)["cell"].nunique()
    assert 1 <= kept < 8
    deadline = time.monotonic() + 20
    while (left := [p for p in started if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"Ray processes outlived the run: {[started[p] for p in left]}"
    rest = cli(
        "run", study, "--out", tmp_path / "res", "--max-group", "1"
    )  # in-process finishes the rest
    assert rest.exit_code == 0 and f"training {8 - kept} of 8 cells" in rest.stdout
    assert pd.read_parquet(res)["cell"].nunique() == 8


def test_without_the_extra_the_user_gets_one_line(tmp_path, data_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    result = cli("run", write_study(tmp_path), "--out", tmp_path / "res", "--executor", "ray")
    assert result.exit_code == 2
    assert (
        result.stderr.strip() == "error: --executor ray needs Ray, which is not installed: "
        'pip install "ablate[ray]"'
    )
    assert not (tmp_path / "res").exists()


def test_the_core_never_imports_ray(tmp_path, data_dir):
    code = (
        "import sys; from ablate import cli, report, runner; from ablate.studyfile import load; "
        "from ablate.executor import RunOptions; "
        "runner.run(load(sys.argv[1]), RunOptions(sys.argv[2])); "
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(write_study(tmp_path)), str(tmp_path / "res")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_a_study_with_own_keys_and_a_dataset_callable_runs_on_ray_as_in_process(tmp_path):
    # the study file's callables travel to the workers by value; each own-keys setting's data
    # is put in the object store once

    study = tmp_path / "blobs.py"
    study.write_text(BLOBS_STUDY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker, which gets 1 CPU
    try:
        local = cli("run", study, "--out", tmp_path / "local", "--deterministic")
    finally:
        torch.set_num_threads(threads)
    assert local.exit_code == 0, local.output
    through_ray = cli(
        "run", study, "--out", tmp_path / "ray", "--deterministic", "--executor", "ray"
    )
    assert through_ray.exit_code == 0, through_ray.output
    a, b = values(tmp_path / "local" / "blobs"), values(tmp_path / "ray" / "blobs")
    assert len(a) == 16 and a["cell"].nunique() == 8
    pd.testing.assert_frame_equal(a, b)
