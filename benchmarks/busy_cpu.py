"""A busy CPU, side by side in one run: `ablate run` with every core free and with one core taken.

OpenMP threads wait at the end of every op for the slowest of them, and with another process on
one of the cores that thread runs only in the scheduler's gaps: on this 2-core machine a run
took 2-6x its time alone (issue 18). ablate now sizes torch's threads to the cores other
processes leave free (ablate/cores.py). This times the same small study three ways, each a
fresh process, best of --rounds, unloaded and loaded (one other process spinning on a core):

  fixed    the threads left as torch sets them (OMP_NUM_THREADS given: ablate keeps its hands off)
  passive  the same, with OMP_WAIT_POLICY=PASSIVE: threads sleep instead of spinning
  adaptive the `ablate` command as users run it

and prints each one's loaded / unloaded ratio (target: at most 2.0) and its unloaded time
against fixed threads' (the cost on a quiet machine).

    python benchmarks/busy_cpu.py [--rounds 3] [--epochs 1] [--subset 30000] [--seeds 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDY = "studies/mnist_mlp.py"  # 8 design points: one fused group of 8 cells per seed
RUN = "import sys; from ablate.cli import main; sys.argv[0] = 'ablate'; main()"
SPIN = "while True: pass"
CORES = str(os.cpu_count() or 1)
POLICIES = {
    "fixed": {"OMP_NUM_THREADS": CORES},
    "passive": {"OMP_NUM_THREADS": CORES, "OMP_WAIT_POLICY": "PASSIVE"},
    "adaptive": {},
}


def run_once(policy: dict, args: list[str], loaded: bool) -> float:
    """Wall seconds of one fresh `ablate run` into a new folder, with a spinning process or not."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if loaded else None
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", RUN, "run", STUDY, "--out", out, *args],
                cwd=REPO,
                env={**env, **policy},
                check=True,
                stdout=subprocess.DEVNULL,
            )
            return time.perf_counter() - start
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="fastest of this many runs per mode")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--subset", type=int, default=30000, help="training images per cell")
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    study_args = [
        *("--set", f"epochs={args.epochs}", "--set", f"train_subset={args.subset}"),
        *("--seeds", str(args.seeds), "--device", "cpu"),
    ]
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}; {STUDY}, {args.seeds} seed(s), {args.epochs} epoch(s), "
        f"{args.subset} images a cell; best of {args.rounds}"
    )
    best = {}
    for _ in range(args.rounds):  # modes interleaved, so a drift in the machine hits them alike
        for name, policy in POLICIES.items():
            for loaded in (False, True):
                seconds = run_once(policy, study_args, loaded)
                best[name, loaded] = min(best.get((name, loaded), float("inf")), seconds)
    head = f"{'threads':9} {'unloaded s':>11} {'loaded s':>9} {'loaded/unloaded':>16}"
    print(f"{head} {'unloaded cost':>14}")
    for name in POLICIES:
        free, busy = best[name, False], best[name, True]
        cost = free / best["fixed", False]
        print(f"{name:9} {free:11.2f} {busy:9.2f} {busy / free:15.2f}x {cost:13.2f}x")
    target = best["adaptive", True] / best["adaptive", False]
    print(f"target: loaded / unloaded <= 2.0x; adaptive measured {target:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
