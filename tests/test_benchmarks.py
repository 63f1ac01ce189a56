"""The benchmark scripts run end to end and print their side-by-side tables (smoke runs only)."""

import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
    assert "% bound" in proc.stdout and "roofline inputs" in proc.stdout


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
    # a smoke run: 40 cells of 256 images, one epoch; it checks the table, not the times
    out = tmp_path / "ref.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/reference_study.py",
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
    for label in ("tutorial loop", "ablate run", "speedup", "target", "fp32 roofline"):
        assert label in proc.stdout, proc.stdout
    assert "trained 40 cells" in proc.stdout
    (row,) = list(csv.DictReader(out.open()))
    assert row["epochs"] == "1" and row["subset"] == "256"
    assert float(row["ablate_s"]) > 0 and float(row["tutorial_s"]) > 0
