"""A busy CPU, side by side in one run: `ablate run` with every core free and with one core taken.

OpenMP threads that spin-wait for a core another process holds made a run 4-6x slower on this
2-core machine (issue 18). ablate sets OMP_WAIT_POLICY=PASSIVE before torch loads, unless the
user set it. This times the same small study four ways, each a fresh process, best of --rounds:

  before  torch imported before ablate, so OpenMP keeps its default policy (spin, then sleep)
  after   the `ablate` command as users run it
  x unloaded, and loaded: one other process spinning on one core for the whole run

and prints the ratios: the collapse (before, loaded / unloaded), the target (after, loaded /
unloaded, at most 2.0) and the unloaded cost of the passive policy (after / before).

    python benchmarks/busy_cpu.py [--rounds 3] [--epochs 1] [--subset 6000] [--seeds 1]
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
BEFORE = "import sys, torch; from ablate.cli import main; sys.argv[0] = 'ablate'; main()"
AFTER = "import sys; from ablate.cli import main; sys.argv[0] = 'ablate'; main()"
SPIN = "while True: pass"


def run_once(code: str, args: list[str], loaded: bool) -> float:
    """Wall seconds of one fresh `ablate run` into a new folder, with a spinning process or not."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if loaded else None
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", code, "run", STUDY, "--out", out, *args],
                cwd=REPO,
                env=env,
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
    ap.add_argument("--subset", type=int, default=6000, help="training images per cell")
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
    policies = (("before", BEFORE), ("after", AFTER))
    modes = [(name, code, loaded) for name, code in policies for loaded in (False, True)]
    best = {}
    for _ in range(args.rounds):  # modes interleaved, so a drift in the machine hits them alike
        for name, code, loaded in modes:
            seconds = run_once(code, study_args, loaded)
            key = (name, loaded)
            best[key] = min(best.get(key, float("inf")), seconds)
    print(f"{'policy':8} {'unloaded s':>11} {'loaded s':>9} {'loaded/unloaded':>16}")
    for name in ("before", "after"):
        free, busy = best[(name, False)], best[(name, True)]
        print(f"{name:8} {free:11.2f} {busy:9.2f} {busy / free:15.2f}x")
    cost = best[("after", False)] / best[("before", False)]
    print(f"passive policy unloaded: {cost:.2f}x the default's time (after / before, no load)")
    target = best[("after", True)] / best[("after", False)]
    print(f"target: loaded / unloaded <= 2.0x; measured {target:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
