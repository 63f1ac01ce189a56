"""The benchmark scripts run end to end and print their side-by-side tables (smoke runs, never timings)."""
import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_runs_side_by_side_and_writes_its_table(tmp_path, data_dir):
    # a smoke run: it checks the script works and reports every mode, not how fast anything is
    out = tmp_path / "t.csv"
    proc = subprocess.run([sys.executable, "benchmarks/throughput.py", "--quick", "--workload", "fashion",
                           "--max-group", "2", "--csv", str(out)], cwd=REPO, capture_output=True, text=True,
                          env={"ABLATE_DATA_DIR": str(data_dir), "ABLATE_CACHE": str(tmp_path / "cache"),
                               "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert [(r["mode"], r["group"]) for r in rows] == [("tutorial", "1"), ("ablate", "1"), ("fused", "2")]
    assert rows[0]["speedup"] == "1.0" and all(float(r["cell_samples_per_s"]) > 0 for r in rows)
    assert "% bound" in proc.stdout and "roofline inputs" in proc.stdout
