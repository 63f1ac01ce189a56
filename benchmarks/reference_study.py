"""The reference study end to end, side by side with the tutorial loop in one run (issue 18 part 3).

(a) the tutorial loop: torchvision MNIST + ToTensor + DataLoader(shuffle=True), one model, as the
    notebooks train it (throughput.tutorial_epoch), timed for --tutorial-epochs epochs of the
    reference cell and scaled to the study's cells x epochs;
(b) `ablate run studies/mnist_mlp.py` in a fresh process, the whole process timed: start-up, data,
    every cell's training and evaluation, the store;
(c) its accuracies against the committed results (`ablate compare`, Welch per point), when the run
    was not shortened.
Prints both times, their ratio, ablate's time against the target (12 minutes on this 2-core CPU)
and the fp32 roofline: the study's FLOPs at the GEMM peak measured here. Time nothing else on
the machine meanwhile: OpenMP threads collapse on a taken core.

    python benchmarks/reference_study.py [--epochs 10] [--tutorial-epochs 1] [--subset N]
        [--csv PATH]

--epochs and --subset shorten the study (a smoke run); the target and roofline scale with them.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from throughput import (  # noqa: E402
    WORKLOADS,
    append_row,
    flops_per_sample,
    measured_peak,
    tutorial_epoch,
)

from ablate import data as datasets  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STUDY, CELLS, EPOCHS, TARGET_S = "studies/mnist_mlp.py", 40, 10, 720
RUN = "import sys; from ablate.cli import main; sys.argv[0] = 'ablate'; main()"


def tutorial_seconds(epochs: int, subset: int | None, cache: Path) -> float:
    """Seconds per epoch of one cell in the tutorial loop, the fastest of `epochs` epochs."""
    dataset, model, cfg = WORKLOADS["reference"]
    times = []
    for _ in range(epochs):
        n, seconds = tutorial_epoch(dataset, model, cfg, torch.device("cpu"), subset, cache)
        times.append(seconds)
    return min(times)


def ablate_seconds(out: Path, epochs: int, subset: int | None) -> tuple[float, str]:
    """The whole `ablate run` process, timed from outside; its last output line."""
    command = [sys.executable, "-c", RUN, "run", STUDY, "--out", str(out), "--device", "cpu"]
    if epochs != EPOCHS:
        command += ["--set", f"epochs={epochs}"]
    if subset:
        command += ["--set", f"train_subset={subset}"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"ablate run failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return seconds, done.stdout.strip().splitlines()[-1]


def compare(out: Path) -> str:
    """`ablate compare`'s one-line summary for the fresh run against the committed one."""
    done = subprocess.run(
        [sys.executable, "-m", "ablate", "compare", "results/mnist_mlp", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if "points agree" in line]
    return lines[-1].strip() if lines else f"ablate compare exit {done.returncode}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="shorten the study (default 10)")
    ap.add_argument("--tutorial-epochs", type=int, default=1, help="tutorial epochs timed")
    ap.add_argument("--subset", type=int, default=None, help="train on the first N images")
    ap.add_argument("--csv", default=None, help="append the figures as one row to this CSV")
    args = ap.parse_args()
    dataset, model, cfg = WORKLOADS["reference"]
    datasets.load(dataset)  # a missing dataset fails here, before anything is timed
    with tempfile.TemporaryDirectory() as tmp:
        cache = datasets.cache_dir() / "torchvision"  # throughput.py's: built once
        per_epoch = tutorial_seconds(args.tutorial_epochs, args.subset, cache)
        tutorial = per_epoch * CELLS * args.epochs
        ours, said = ablate_seconds(Path(tmp) / "run", args.epochs, args.subset)
        full = args.epochs == EPOCHS and not args.subset
        agreement = compare(Path(tmp) / "run" / "mnist_mlp") if full else ""
    peak = measured_peak(torch.device("cpu"))
    data = datasets.load(dataset)
    train, test = min(args.subset or len(data.train_x), len(data.train_x)), len(data.test_x)
    flop = CELLS * args.epochs * flops_per_sample(model, cfg) * (train + test / 3)  # eval: fwd
    roofline = flop / peak
    target = TARGET_S * args.epochs / EPOCHS * train / len(data.train_x)
    threads = os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()
    print(
        f"device: cpu: {platform.processor() or platform.machine()}, {threads} threads; "
        f"torch {torch.__version__}; {time.strftime('%Y-%m-%d')}; "
        f"{STUDY}: {CELLS} cells x {args.epochs} epochs"
    )
    print(f"tutorial loop  {tutorial:8.1f} s  ({per_epoch:.1f} s per cell-epoch, scaled)")
    print(f"ablate run     {ours:8.1f} s  whole process; it said: {said}")
    print(f"speedup        {tutorial / ours:8.2f} x  the tutorial loop's time over ablate's")
    met = "met" if ours <= target else "missed"
    print(f"target         {target:8.1f} s  {met} ({ours / target:.2f} of it)")
    print(
        f"fp32 roofline  {roofline:8.1f} s  ({flop / 1e12:.1f} TFLOP at the {peak / 1e9:.0f} GFLOP/s "
        f"GEMM peak measured here): ablate at {roofline / ours:.0%} of it"
    )
    if agreement:
        print(f"accuracies     {agreement}")
    if args.csv:
        row = dict(
            date=time.strftime("%Y-%m-%d"),
            epochs=args.epochs,
            subset=args.subset or "",
            tutorial_s=round(tutorial, 1),
            ablate_s=round(ours, 1),
            speedup=round(tutorial / ours, 2),
            target_s=target,
            roofline_s=round(roofline, 1),
            agreement=agreement,
        )
        append_row(args.csv, row)


if __name__ == "__main__":
    main()
