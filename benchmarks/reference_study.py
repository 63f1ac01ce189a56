"""The reference study end to end beside the tutorial loop on one device, in one run (issue 26).

(a) the tutorial loop: the study's first cell as the notebooks train it, on the same device and
    `.to(device)` per batch: torchvision + ToTensor + DataLoader(shuffle=True) for MNIST and
    Fashion-MNIST (throughput.tutorial_epoch), a TensorDataset of the images scaled to 0..1 for
    the sets torchvision lacks (scikit-learn's digits); --tutorial-epochs epochs of that one cell,
    each after 50 warm-up steps, the fastest scaled to the study's cell-epochs (40 cells x 10
    epochs for the reference study), so it costs seconds where the whole loop would take hours;
(b) `ablate run STUDY --device D` in a fresh process, the whole process timed: start-up, data,
    every cell's training and evaluation, the store;
(c) its accuracies against the committed results/<study> (`ablate compare`, Welch per point),
    when the run was not shortened.
Prints the speedup (the tutorial loop's scaled time over ablate's), the fp32 roofline (the study's
FLOPs, training and evaluation, at the fp32 GEMM peak measured on the device, TF32 off) and
ablate's share of it, and for the reference study on the CPU ablate's time against the target (12
minutes on this 2-core CPU). Each figure is printed as it is measured, ablate's lines passed through
between them, so a run that `timeout` cuts short keeps them in its log; the CSV gets one row at the
end, also when SIGTERM stops the run (then with what was measured by then). Time nothing else on
the machine meanwhile: OpenMP threads collapse on a taken core.

    python benchmarks/reference_study.py [--study studies/mnist_mlp.py] [--device auto]
        [--epochs N] [--subset N] [--tutorial-epochs 1] [--out DIR] [--csv PATH]

--epochs and --subset shorten the study and the tutorial loop alike (a smoke run); the target and
the roofline scale with them. Lines to grep: `tutorial loop:`, `fp32 roofline:`, `ablate run:`,
`speedup:`, `roofline:`, `target:`, `accuracies:`, `stopped:`.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from throughput import append_row, measured_peak, timed_loop, tutorial_epoch  # noqa: E402

from ablate import data as datasets  # noqa: E402
from ablate import engine, studyfile  # noqa: E402
from ablate.errors import AblateError  # noqa: E402
from ablate.local import device_name  # noqa: E402
from ablate.study import cells, defaults  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STUDY, TARGET_S = "studies/mnist_mlp.py", 720  # the target: the reference study, 2-core CPU
RUN = "import sys; from ablate.cli import main; sys.argv[0] = 'ablate'; main()"
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}  # throughput.tutorial_model's


class Stopped(Exception):
    """A signal (`timeout`'s SIGTERM) ended the run; `seconds`: ablate's time until then."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum, self.seconds = signum, None


def _stop(signum, frame):
    raise Stopped(signum)


def fig(x: float) -> str:
    """Three significant figures and no exponent (0.0912, 3.52, 44.0, 429, 1234): the row's and
    the printed line's figure, the same string."""
    return f"{x:.0f}" if abs(x) >= 999.5 else f"{x:#.3g}".rstrip(".")  # 999.6: not 1.00e+03


class Failed(Exception):
    """`ablate run` exited with an error (printed above, its stderr being ours)."""


def tutorial_mlp(inputs: int, classes: int, cfg: dict) -> nn.Module:
    """throughput.tutorial_model's MLP for any input width and number of classes."""
    layers, width = [nn.Flatten()], inputs
    for h in cfg["hidden"]:
        drop = [nn.Dropout(cfg["dropout"])] if cfg.get("dropout") else []
        layers += [nn.Linear(width, h), ACTIVATIONS[cfg["activation"]](), *drop]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, classes))


def tensor_epoch(data, cfg: dict, device, limit: int | None) -> float:
    """The tutorial loop for a set torchvision lacks, as the scikit-learn tutorials write it: the
    images as floats in 0..1 (ToTensor's scale) in a TensorDataset, DataLoader(shuffle=True),
    `.to(device)` per batch; seconds of one epoch after up to 50 warm-up steps."""
    x, y = data.train_x[:limit], data.train_y[:limit]
    x = x.float() / 255 if data.images else x.float()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=cfg["batch_size"], shuffle=True
    )
    return timed_loop(tutorial_mlp(x[0].numel(), data.classes, cfg).to(device), cfg, loader, device)


def tutorial_seconds(study, cfg, data, device, epochs: int, limit: int | None) -> float:
    """Seconds per epoch of the study's first cell in the tutorial loop, the fastest of `epochs`."""
    cache = datasets.cache_dir() / "torchvision"  # throughput.py's: unzipped once
    times = []
    for _ in range(epochs):
        if study.dataset in datasets.SOURCES:
            times.append(tutorial_epoch(study.dataset, "mlp", cfg, device, limit, cache)[1])
        else:
            times.append(tensor_epoch(data, cfg, device, limit))
    return min(times)


def study_flop(configs: list[dict], data) -> float:
    """fp32 FLOPs of every cell's training and evaluation: throughput.flops_per_sample's count
    (6 per weight and sample: 2 forward, 4 backward) for the data's input width; the test pass
    each epoch is forward only, a third of that."""
    inputs, total = data.train_x[0].numel(), 0.0
    for cfg in configs:
        widths = [inputs, *cfg["hidden"], data.classes]
        per_sample = 6 * sum(a * b for a, b in zip(widths, widths[1:], strict=False))
        train = min(cfg["train_subset"] or len(data.train_x), len(data.train_x))
        total += cfg["epochs"] * per_sample * (train + len(data.test_x) / 3)
    return total


def ablate_seconds(study: Path, out: Path, device, sets: list[str]) -> float:
    """The whole `ablate run` process, timed from outside, its output passed through line by line.
    A signal stopping this script is passed on (ablate ignores a second one while it stores the
    groups it finished); Stopped then carries the seconds until the process ended."""
    command = [sys.executable, "-c", RUN, "run", str(study), "--out", str(out)]
    command += ["--device", str(device)] + [f"--set={s}" for s in sets]
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its lines as they come, not at its exit
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            print(f"  | {line.rstrip()}")
        code = child.wait()
    except Stopped as e:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=8)  # within `timeout --kill-after=10`
        except subprocess.TimeoutExpired:
            child.kill()
        e.seconds = time.perf_counter() - start
        raise
    if code:
        raise Failed(f"ablate run failed (exit {code}); its errors are above")
    return time.perf_counter() - start


def compare(committed: Path, fresh: Path) -> str:
    """`ablate compare`'s one-line summary for the fresh run against the committed one."""
    done = subprocess.run(
        [sys.executable, "-m", "ablate", "compare", str(committed), str(fresh)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if "points show no difference" in line]
    return lines[-1].strip() if lines else f"ablate compare exit {done.returncode}"


def write_row(path: str, row: dict) -> None:
    """append_row, limited to the columns of a CSV written before (the committed CPU one has the
    first nine), so an older file's columns stay aligned."""
    if Path(path).exists():
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
        if header:
            row = {k: row.get(k, "") for k in header}
    append_row(path, row)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=STUDY, help=f"an MLP study file (default {STUDY})")
    ap.add_argument(
        "--device",
        default="auto",
        help="auto (the GPU where there is one), cpu, cuda or cuda:N: the tutorial loop's and "
        "`ablate run`'s",
    )
    ap.add_argument("--epochs", type=int, default=None, help="shorten the study (default: its own)")
    ap.add_argument("--tutorial-epochs", type=int, default=1, help="tutorial epochs timed")
    ap.add_argument("--subset", type=int, default=None, help="train on the first N images")
    ap.add_argument(
        "--out",
        default=None,
        help="keep ablate's results folder under this folder (default: a temporary one); its "
        "study folder must not hold a run yet",
    )
    ap.add_argument("--csv", default=None, help="append the figures as one row to this CSV")
    return ap.parse_args()


def prepare(args):
    """(study, its first cell's full config, every cell's config, data, device, --set items);
    a user's mistake ends the script here, before anything is timed."""
    sets = [f"epochs={args.epochs}"] if args.epochs else []
    sets += [f"train_subset={args.subset}"] if args.subset else []
    try:
        device = engine.pick_device(args.device)
        study = studyfile.override(studyfile.load(args.study), sets)
        if study.model != "mlp" or not isinstance(study.dataset, str):
            raise AblateError(f"{args.study}: the tutorial loop is an MLP's on a built-in dataset")
        configs = [{**defaults(study), **c.config} for c in cells(study)]
        if bad := {c["activation"] for c in configs} - set(ACTIVATIONS):
            raise AblateError(f"{args.study}: the tutorial loop has no activation {bad.pop()}")
        data = datasets.load(study.dataset)
    except AblateError as e:
        sys.exit(f"reference_study: {e}")
    return study, configs[0], configs, data, device, sets


def measure(args, row: dict, out: Path) -> None:
    """The figures, each printed and put in `row` as soon as it is measured."""
    study, cfg, configs, data, device, sets = prepare(args)
    if (out / study.name).is_dir() and any((out / study.name).iterdir()):
        sys.exit(f"reference_study: {out / study.name} holds a run; timing needs a fresh one")
    engine.configure(deterministic=False)  # fp32 everywhere: no TF32 in the loop or the peak
    if device.type == "cuda":
        torch.cuda.set_device(device)  # throughput.sync waits on the current device
    name, epochs = device_name(device), cfg["epochs"]
    cell_epochs = sum(c["epochs"] for c in configs)  # 400 for the reference study
    row.update(study=study.name, device=name, epochs=epochs, subset=args.subset or "")
    row.update(cells=len(configs), cell_epochs=cell_epochs)
    print(
        f"device: {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}; "
        f"{args.study}: {len(configs)} cells x {epochs} epochs"
    )
    per_epoch = tutorial_seconds(study, cfg, data, device, args.tutorial_epochs, args.subset)
    tutorial = per_epoch * cell_epochs
    row.update(tutorial_s=round(tutorial, 1), tutorial_epoch_s=f"{per_epoch:.4g}")
    print(
        f"tutorial loop: {tutorial:.1f} s for {cell_epochs} cell-epochs, scaled from "
        f"{per_epoch:.4g} s per cell-epoch (the fastest of {args.tutorial_epochs}) on {name}"
    )
    roofline = fp32_roofline(configs, data, device, row)
    ours = ablate_seconds(Path(args.study).resolve(), out, device, sets)
    row.update(ablate_s=round(ours, 1), speedup=fig(tutorial / ours))
    row.update(roofline_pct=fig(100 * roofline / ours))
    print(f"ablate run: {ours:.1f} s, the whole process (start-up, data, training, the store)")
    print(f"speedup: {row['speedup']}x the tutorial loop on {name}")
    print(f"roofline: {row['roofline_pct']} % of the fp32 roofline ({fig(roofline)} s) on {name}")
    if Path(args.study).resolve() == REPO / STUDY and device.type == "cpu":
        target = TARGET_S * epochs / 10 * min(args.subset or 60_000, 60_000) / 60_000
        row["target_s"] = round(target, 1)
        met = "met" if ours <= target else "missed"
        print(f"target: {target:.1f} s on this 2-core CPU: {met} ({ours / target:.2f} of it)")
    if not sets and (REPO / "results" / study.name).is_dir():
        row["agreement"] = compare(REPO / "results" / study.name, out / study.name)
        print(f"accuracies: {row['agreement']}")


def fp32_roofline(configs: list[dict], data, device, row: dict) -> float:
    """Seconds the study's FLOPs take at the fp32 GEMM peak measured on `device`; printed."""
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the tutorial loop's memory back to the card, for ablate's run
    flop, peak = study_flop(configs, data), measured_peak(device)
    row.update(roofline_s=fig(flop / peak), gflop=f"{flop / 1e9:.1f}", peak_gflops=fig(peak / 1e9))
    print(
        f"fp32 roofline: {row['roofline_s']} s: {flop / 1e12:.3g} TFLOP at the "
        f"{row['peak_gflops']} GFLOP/s fp32 GEMM peak (2048^3) measured on {device_name(device)}"
    )
    return flop / peak


def main() -> int:
    args = parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # a log cut short keeps every line printed
    signal.signal(signal.SIGTERM, _stop)  # timeout's: the row is still written
    row, code = dict(date=time.strftime("%Y-%m-%d")), 0
    with tempfile.TemporaryDirectory() as tmp:
        try:
            measure(args, row, Path(args.out or tmp).resolve())
        except Stopped as e:
            if "ablate_s" in row:
                when = "after ablate run, in the comparison"
            elif e.seconds is not None:
                when = f"in ablate run, {e.seconds:.1f} s after it started"
            else:
                when = "before ablate run started"
            print(f"stopped: signal {e.signum} {when}; the figures above were measured")
            row["stopped"], code = when, 128 + e.signum  # the shell's: 143 for SIGTERM
        except Failed as e:
            print(f"stopped: {e}")
            row["stopped"], code = str(e), 1
    if args.csv:
        columns = ["date", "epochs", "subset", "tutorial_s", "ablate_s", "speedup", "target_s"]
        columns += ["roofline_s", "agreement", "study", "device", "cells", "cell_epochs"]
        columns += ["tutorial_epoch_s", "gflop", "peak_gflops", "roofline_pct", "stopped"]
        write_row(args.csv, {k: row.get(k, "") for k in columns})
    return code


if __name__ == "__main__":
    sys.exit(main())
