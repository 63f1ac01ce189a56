"""The benchmark scripts run end to end and print their side-by-side tables (smoke runs only)."""

import csv
import os
import subprocess
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow  # each test runs a benchmark script in a subprocess


def test_throughput_benchmark_runs_side_by_side_and_writes_its_table(tmp_path, data_dir):
    # a smoke run: it checks the script works and reports every mode, not how fast anything is
    out = tmp_path / "t.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/throughput.py",
            "--quick",
            "--workload",
            "fashion",
            "--max-group",
            "2",
            "--csv",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={
            "ABLATE_DATA_DIR": str(data_dir),
            "ABLATE_CACHE": str(tmp_path / "cache"),
            "PATH": "/usr/bin:/bin",
        },
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert [(r["mode"], r["group"]) for r in rows] == [
        ("tutorial", "1"),
        ("ablate", "1"),
        ("fused", "2"),
    ]
    assert rows[0]["speedup"] == "1.0" and all(float(r["cell_samples_per_s"]) > 0 for r in rows)
    # ablate's test pass is timed apart from its steps; the tutorial loop has none
    assert rows[0]["eval_s"] == "" and all(float(r["eval_s"]) > 0 for r in rows[1:])
    assert all(r["error"] == "" for r in rows)
    assert "% bound" in proc.stdout and "roofline inputs" in proc.stdout


def test_throughput_benchmark_keeps_each_row_as_measured_and_goes_on_past_a_failing_group(
    tmp_path, monkeypatch, capsys
):
    # the timings faked: the reference MLP's group of 4 raises as cuDNN does on a large grouped
    # convolution; each call notes how many rows the CSV already holds
    import argparse

    import torch

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import throughput

    out, calls = tmp_path / "t.csv", []

    def ablate_epoch(dataset, model, cfg, device, limit, g, precision, repeat):
        calls.append((dataset, g, len(list(csv.DictReader(out.open())))))
        if dataset == "mnist" and g == 4:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED.\nits second line")
        return 1000 * g, 0.5, 0.1 * g  # cell-samples, train seconds, eval seconds

    monkeypatch.setattr(throughput, "ablate_epoch", ablate_epoch)
    monkeypatch.setattr(throughput, "tutorial_epoch", lambda *a: (1000, 1.0))
    args = argparse.Namespace(
        csv=str(out), repeat=1, budget=None, until_flat=None, precision="fp32", limit=6400, top=8
    )
    rows = []
    throughput.measure(args, torch.device("cpu"), ["reference", "fashion"], (1e11, 1e10), rows)
    written = list(csv.DictReader(out.open()))
    cudnn = "RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED."
    assert [(r["workload"], r["mode"], r["group"], r["error"]) for r in written] == [
        ("reference", "tutorial", "1", ""),
        ("reference", "ablate", "1", ""),
        ("reference", "fused", "2", ""),
        ("reference", "fused", "4", cudnn),
        ("fashion", "tutorial", "1", ""),
        ("fashion", "ablate", "1", ""),
        ("fashion", "fused", "2", ""),
        ("fashion", "fused", "4", ""),
        ("fashion", "fused", "8", ""),
    ]
    # every group started with the rows measured before it already in the file
    assert calls == [
        ("mnist", 1, 1),
        ("mnist", 2, 2),
        ("mnist", 4, 3),
        ("fashion_mnist", 1, 5),
        ("fashion_mnist", 2, 6),
        ("fashion_mnist", 4, 7),
        ("fashion_mnist", 8, 8),
    ]
    assert len(rows) == len(written) and written[3]["cell_samples_per_s"] == ""
    assert (written[2]["speedup"], written[2]["eval_s"]) == ("4.0", "0.2")
    printed = capsys.readouterr().out
    assert f"reference: groups stopped: a group of 4 failed: {cudnn}" in printed
    assert "fashion: groups stopped: reached --max-group 8" in printed


def test_compile_benchmark_compares_eager_and_compiled_side_by_side(data_dir, tmp_path):
    # a smoke run: torch.compile (inductor, a C++ compiler on the CPU) against eager on 2 cells
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/compile.py",
            "--workload",
            "fashion",
            "--group",
            "2",
            "--steps",
            "25",
            "--rounds",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={
            "ABLATE_DATA_DIR": str(data_dir),
            "PATH": "/usr/bin:/bin",
            "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert "round 1 eager" in proc.stdout and "round 1 compiled" in proc.stdout
    assert "x eager's speed" in proc.stdout and "largest relative loss difference" in proc.stdout


def test_sgd_step_benchmark_times_the_step_in_and_after_the_backward_on_the_same_maths(
    data_dir, tmp_path
):
    # a smoke run of 2 batchnorm cells in fp64: both ways print their times and train alike
    out = tmp_path / "sgd.csv"
    args = ["--workload", "fashion", "--group", "2", "--steps", "25", "--rounds", "1"]
    proc = subprocess.run(
        [sys.executable, "benchmarks/sgd_step.py", *args, "--set", "batchnorm=True"]
        + ["--set", "precision=fp64", "--csv", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"ABLATE_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    # 25 steps of 3 layers: every weight step in the backward one way, none the other
    assert "round 1 in backward" in proc.stdout and "75 weight steps in the backward" in proc.stdout
    assert "round 1 after" in proc.stdout and "; 0 weight steps in the backward" in proc.stdout
    (row,) = list(csv.DictReader(out.open()))
    assert row["sets"] == "batchnorm=True precision=fp64"
    assert float(row["in_backward_speedup"]) > 0
    # the same sums in another order: fp64 rounding (4e-16 measured), not another algorithm
    assert float(row["max_rel_loss_diff"]) < 1e-10, row


def test_busy_cpu_benchmark_times_each_thread_policy_loaded_and_unloaded(data_dir):
    # a smoke run: six fresh `ablate run`s of 8 tiny cells; it checks the table, not the times
    proc = subprocess.run(
        [sys.executable, "benchmarks/busy_cpu.py", "--rounds", "1", "--subset", "256"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"ABLATE_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["fixed", "passive", "adaptive"], lines
    assert "target: loaded / unloaded <= 2.0x; adaptive measured" in proc.stdout


def test_reference_study_benchmark_times_the_tutorial_loop_and_ablate_run_side_by_side(
    data_dir, tmp_path
):
    # a smoke run: 40 cells of 256 images, one epoch; it checks the figures agree, not the times
    import re

    out = tmp_path / "ref.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/reference_study.py",
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--subset",
            "256",
            "--csv",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={
            "ABLATE_DATA_DIR": str(data_dir),
            "ABLATE_CACHE": str(tmp_path / "cache"),
            "PATH": "/usr/bin:/bin",
        },
    )
    assert proc.returncode == 0, proc.stderr
    for label in ("tutorial loop:", "fp32 roofline:", "ablate run:", "target:"):
        assert f"\n{label} " in proc.stdout, proc.stdout
    assert "trained 40 cells" in proc.stdout and "stopped:" not in proc.stdout
    speedup = re.search(r"^speedup: ([\d.]+)x the tutorial loop on cpu: ", proc.stdout, re.M)
    share = r"^roofline: ([\d.]+) % of the fp32 roofline \(([\d.]+) s\) on cpu: "
    roofline = re.search(share, proc.stdout, re.M)
    assert speedup and roofline, proc.stdout
    (row,) = list(csv.DictReader(out.open()))
    assert row["epochs"] == "1" and row["subset"] == "256" and row["stopped"] == ""
    assert (row["study"], row["cells"], row["cell_epochs"]) == ("mnist_mlp", "40", "40")
    assert row["device"].startswith("cpu: ") and row["agreement"] == ""  # shortened: no compare
    tutorial, ours = 40 * float(row["tutorial_epoch_s"]), float(row["ablate_s"])
    assert tutorial > 0 and ours > 0 and abs(float(row["tutorial_s"]) - tutorial) <= 0.05
    # the printed figures are the row's, and each follows from the measured ones (within their
    # rounding: 3 significant figures, ablate's time to 0.1 s)
    assert (speedup[1], roofline[1]) == (row["speedup"], row["roofline_pct"])
    assert roofline[2] == row["roofline_s"]
    assert abs(float(row["speedup"]) / (tutorial / ours) - 1) < 0.02
    assert 0 < float(row["roofline_pct"]) <= 100
    assert abs(float(row["roofline_pct"]) / (100 * float(row["roofline_s"]) / ours) - 1) < 0.02
    peak_s = float(row["gflop"]) / float(row["peak_gflops"])  # FLOPs over the measured peak
    assert abs(peak_s / float(row["roofline_s"]) - 1) < 0.02


def test_reference_study_benchmark_refuses_a_gpu_this_machine_lacks(tmp_path):
    out = tmp_path / "ref.csv"
    proc = subprocess.run(
        [sys.executable, "benchmarks/reference_study.py", "--device", "cuda:7", "--csv", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "--device cuda:7: this machine has" in proc.stderr
    assert "try --device auto or cpu" in proc.stderr and not out.exists()


def test_reference_study_benchmark_stopped_by_sigterm_in_ablate_run_still_writes_its_row(
    data_dir, tmp_path
):
    # `ablate run` faked by a process that prints a line and sleeps; the peak faked at 100 GFLOP/s;
    # SIGTERM (timeout's) lands once that line is through: the row keeps the tutorial loop's time
    import signal

    out = tmp_path / "ref.csv"
    argv = ["--study", "studies/digits_mlp.py", "--device", "cpu", "--csv", str(out)]
    script = (
        "import sys; sys.path.insert(0, 'benchmarks'); import reference_study as r; "
        "r.RUN = \"import time; print('fake run', flush=True); time.sleep(60)\"; "
        f"r.measured_peak = lambda device: 1e11; sys.argv[1:] = {argv!r}; sys.exit(r.main())"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "| fake run" in line:
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, lines
    assert lines[-1].startswith("stopped: signal 15 in ablate run, "), lines
    assert not any(line.startswith(("speedup:", "ablate run:")) for line in lines), lines
    (row,) = list(csv.DictReader(out.open()))
    assert row["study"] == "digits_mlp" and row["cell_epochs"] == "600"  # 20 cells x 30 epochs
    assert float(row["tutorial_s"]) > 0 and row["roofline_s"] and row["ablate_s"] == ""
    assert row["stopped"].startswith("in ablate run, ") and row["speedup"] == ""


def test_a_fused_step_dispatches_at_most_90_operations_reference_and_130_relu_batchnorm(
    data_dir, tmp_path
):
    # issue 26's targets: each operation is a kernel launch on a GPU; the count is exact
    out = tmp_path / "ops.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/launches.py",
            "--group",
            "3",
            "--steps",
            "3",
            "--ops",
            "--csv",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "ABLATE_DATA_DIR": str(data_dir)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["cell"]: r for r in csv.DictReader(out.open())}
    assert set(rows) == {"reference", "relu+batchnorm"}
    for name, target in (("reference", 90), ("relu+batchnorm", 130)):
        assert int(rows[name]["ops"]) <= target, proc.stdout
        assert f"{name:15s} {rows[name]['ops']:>4s} operations a group step" in proc.stdout
    # the count sees the model: three products forward and three weight steps in the backward
    reference = proc.stdout.split("\n")[1]
    assert "baddbmm 3" in reference and "baddbmm_ 3" in reference and "sigmoid 2" in reference
    assert "native_batch_norm 2" in proc.stdout.split("\n")[3]
