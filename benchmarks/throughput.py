"""Throughput, side by side in one run: the tutorial loop vs ablate's plain path vs fused groups.

(a) tutorial: torchvision MNIST + ToTensor + DataLoader(shuffle=True), one model, .to(device)
per batch, one epoch timed after 50 warm-up steps; (b) ablate, groups of 1 (the plain path);
(c) ablate fused, groups of 2, 4, ... up to --max-group. Each ablate group is built, copied to
the device and warmed up untimed; then the fastest of --repeat training epochs (or --quick's
subsets) is timed, and the group's test pass (10,000 images, all its cells) apart from it.

    python benchmarks/throughput.py [--workload reference|fashion|cnn|both|all] [--device auto]
        [--quick] [--until-flat PCT] [--budget SECONDS] [--csv PATH]

--until-flat keeps doubling the group (past --max-group's default) until a doubling gains less
than PCT percent of cell-samples/s; --budget stops starting new groups when the time runs out.

The CSV (--csv, emptied at the start) gets each measurement's row the moment it is taken, so a
run cut short (an error, `timeout`'s SIGTERM or SIGKILL) keeps every row measured before it. The
roofline's peak and bandwidth are found before the first run, so every row is whole when written:
the table's columns, then train_s and eval_s (the seconds timed) and `error`. A group size that
raises (a cuDNN RuntimeError, out of memory) gets a row with only workload, mode, group and the
exception's first line in `error`; that workload stops doubling and the next one goes on. On
SIGTERM or Ctrl-C the table of the rows measured so far is still printed.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import gzip
import math
import platform
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ablate import data as datasets  # noqa: E402
from ablate import engine, fused, loop  # noqa: E402
from ablate.local import device_name  # noqa: E402
from ablate.study import Study, cells, validate  # noqa: E402

EXAMPLES = (
    "conv:10:5",
    "maxpool:2",
    "act",
    "conv:20:5",
    "dropout2d:0.5",
    "maxpool:2",
    "act",
    "flatten",
    "fc:50",
    "act",
    "dropout:0.5",
)
# the reference study's baseline cell, the Fashion-MNIST tutorial's MLP, the examples CNN
WORKLOADS = {
    "reference": (
        "mnist",
        "mlp",
        dict(
            hidden=(512, 256),
            activation="sigmoid",
            dropout=0.5,
            lr=0.01,
            momentum=0.5,
            batch_size=32,
            epochs=10,
        ),
    ),
    "fashion": (
        "fashion_mnist",
        "mlp",
        dict(hidden=(256, 128), activation="relu", lr=0.01, batch_size=64, epochs=30),
    ),
    "cnn": (
        "mnist",
        "cnn",
        dict(layers=EXAMPLES, activation="relu", lr=0.01, momentum=0.5, batch_size=64, epochs=40),
    ),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def append_row(path: str | Path, row: dict) -> None:
    """Append one row of figures to a CSV, writing its header first when the file is new."""
    path = Path(path)
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def flops_per_sample(model, cfg) -> float:
    """Training FLOPs per sample: 2 per multiply-add forward, 4 backward (input and weight grads);
    for a CNN, counted by torch's FlopCounterMode over one training step of the tutorial's model."""
    if model == "mlp":
        widths = [784, *cfg["hidden"], 10]
        return 6 * sum(a * b for a, b in zip(widths, widths[1:], strict=False))
    from torch.utils.flop_counter import FlopCounterMode

    net, bs = tutorial_model(model, cfg), cfg["batch_size"]
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(
            net(torch.zeros(bs, 1, 28, 28)), torch.zeros(bs, dtype=torch.long)
        ).backward()
    return counter.get_total_flops() / bs


def tutorial_model(model, cfg) -> nn.Module:
    """The model as the tutorials write it, with torch's own layers."""
    act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}[cfg["activation"]]
    if model == "cnn":  # the PyTorch examples' Net as a Sequential
        return nn.Sequential(
            nn.Conv2d(1, 10, 5),
            nn.MaxPool2d(2),
            act(),
            nn.Conv2d(10, 20, 5),
            nn.Dropout2d(0.5),
            nn.MaxPool2d(2),
            act(),
            nn.Flatten(),
            nn.Linear(320, 50),
            act(),
            nn.Dropout(0.5),
            nn.Linear(50, 10),
        )
    layers, width = [nn.Flatten()], 784
    for h in cfg["hidden"]:
        layers += [nn.Linear(width, h), act()] + (
            [nn.Dropout(cfg["dropout"])] if cfg.get("dropout") else []
        )
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 10))


def torchvision_root(name: str, cache: Path) -> Path:
    """torchvision wants the unzipped IDX files under <root>/<Folder>/raw/."""
    folder = datasets.SOURCES[name][0]
    raw = cache / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for path in datasets.locate(name):
        target = raw / path.name.removesuffix(".gz")
        if not target.exists():
            with (
                (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f,
                open(target, "wb") as out,
            ):
                shutil.copyfileobj(f, out)
    return cache


def tutorial_epoch(name, model_name, cfg, device, limit, cache) -> tuple[int, float]:
    """The notebook loop; returns (samples, seconds) of one timed epoch after 50 warm-up steps."""
    import torchvision
    from torchvision import transforms

    cls = getattr(torchvision.datasets, datasets.SOURCES[name][1])
    ds = cls(
        str(torchvision_root(name, cache)),
        train=True,
        download=False,
        transform=transforms.ToTensor(),
    )
    if limit:
        ds = torch.utils.data.Subset(ds, range(limit))
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg["batch_size"], shuffle=True)
    return len(ds), timed_loop(tutorial_model(model_name, cfg).to(device), cfg, loader, device)


def timed_loop(model: nn.Module, cfg: dict, loader, device) -> float:
    """Seconds of one epoch of the notebook loop over `loader` (torch.optim.SGD, cross-entropy,
    `.to(device)` per batch), after 50 warm-up steps."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg.get("momentum", 0.0))
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    for i, (x, y) in enumerate(loader):  # warm-up
        step(x, y)
        if i == 50:
            break
    sync(device)
    start = time.perf_counter()
    for x, y in loader:
        step(x, y)
    sync(device)
    return time.perf_counter() - start


def bench_cells(name, model, base, g) -> list:
    """G cells of the workload's recipe, seeds 0..G-1."""
    return cells(validate(Study(name="bench", dataset=name, model=model, base=base, seeds=g)))


def build(todo, data, device, model) -> list:
    """The groups engine.train trains these cells in: one fused group where fused.can_fuse says
    so, else each cell alone on the plain path (a group of 1; a CNN's cells on a CPU)."""
    if len(todo) > 1 and fused.can_fuse(todo, model, device):
        return [fused.group(todo, data, device, model)]
    return [loop.Plain(cell, data, model, device) for cell in todo]


def parts(groups, todo) -> list:
    """The cells of each group `build` made from `todo` (or from cells of the same seeds)."""
    return [todo] if len(groups) == 1 else [[cell] for cell in todo]


def train_epoch(groups, todo, data, device) -> None:
    for group, part in zip(groups, parts(groups, todo), strict=True):
        loop.train(group, part, data, device)


def evaluation(groups, todo, data, precision) -> None:
    with loop.tf32(precision):  # as loop.train runs its own test pass
        for group, part in zip(groups, parts(groups, todo), strict=True):
            loop.evaluate(group, data, [cell.config for cell in part])


def timed(device, fn, *args) -> float:
    sync(device)
    start = time.perf_counter()
    fn(*args)
    sync(device)
    return time.perf_counter() - start


def ablate_epoch(
    name, model, cfg, device, limit, g, precision="fp32", repeat=1
) -> tuple[int, float, float]:
    """G cells (seeds 0..G-1), grouped as engine.train groups them; returns (cell-samples, train
    seconds, eval seconds): the fastest of `repeat` training epochs and, apart, of `repeat` test
    passes of all G cells. Building, stacking and copying the models (with engine.train's
    evaluation, 20-40% of a GPU epoch at large G: issue 26) and the warm-up are outside both."""
    data = datasets.load(name, device)
    n, size = min(limit or len(data.train_x), len(data.train_x)), cfg["batch_size"]
    base = {**cfg, "epochs": 1, "train_subset": limit or None, "precision": precision}
    todo = bench_cells(name, model, base, g)
    # 50 steps and then the timed epoch's shorter last batch: cudnn.benchmark tunes each shape
    # once, in the warm-up, not inside the timer
    warm = bench_cells(name, model, {**base, "train_subset": 50 * size + n % size}, g)
    groups = build(todo, data, device, model)
    # loop.train ends each epoch with a test pass: over this one image it costs a few kernels,
    # so train_s times the steps (and the epoch's order, flips and loss sync) alone
    one = dataclasses.replace(data, test_x=data.test_x[:1], test_y=data.test_y[:1])
    train_epoch(groups, warm, one, device)
    evaluation(groups, todo, data, precision)
    train_s = min(timed(device, train_epoch, groups, todo, one, device) for _ in range(repeat))
    eval_s = min(timed(device, evaluation, groups, todo, data, precision) for _ in range(repeat))
    return g * n, train_s, eval_s


def measured_peak(device, dtype=torch.float32) -> float:
    """Best of 10 2048^3 GEMMs: the dense rate this device really reaches (the CPU's
    datasheet peak is unclear: Zen 4 runs AVX-512 as two 256-bit halves)."""
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    a @ a  # warm-up: library initialisation
    best = 0.0
    for _ in range(10):
        sync(device)
        start = time.perf_counter()
        a @ a
        sync(device)
        best = max(best, 2 * 2048**3 / (time.perf_counter() - start))
    return best


# datasheet dense peaks (SXM parts) by precision: fp32 without tensor cores, tf32 and bf16 with them
DATASHEET = {
    "H100": ({"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12}, 3.35e12),
    "H200": ({"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12}, 4.8e12),
    "A100": ({"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12}, 2.0e12),
}


def device_limits(device, precision="fp32") -> tuple[float, float, str]:
    """(peak FLOP/s, memory bytes/s, how each was found)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (peaks, bw) in DATASHEET.items():
            if key in name:
                peak = peaks[precision]
                return (
                    peak,
                    bw,
                    f"{name}: datasheet {precision} {peak / 1e12:.1f} TFLOP/s, "
                    f"{bw / 1e12:.2f} TB/s",
                )
    peak = measured_peak(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    x = torch.empty(64 * 2**20, dtype=torch.float32, device=device)  # 256 MiB: far past any cache
    y = torch.empty_like(x)
    y.copy_(x)
    sync(device)
    start = time.perf_counter()
    for _ in range(5):
        y.copy_(x)
    sync(device)
    bw = 5 * 2 * x.numel() * 4 / (time.perf_counter() - start)
    return (
        peak,
        bw,
        (
            f"{'bf16' if precision == 'bf16' else 'fp32'} GEMM 2048^3 measured "
            f"{peak / 1e9:.0f} GFLOP/s; "
            f"copy bandwidth measured {bw / 1e9:.1f} GB/s"
        ),
    )


def intensity(model, cfg) -> float:
    """FLOPs per DRAM byte of one fused step: weights read forward and backward, gradient written,
    momentum read and written, weights written (6 passes of 4 bytes), plus the batch's activations
    (each linear, conv and pool output written forward, read backward, and its gradient)."""
    net, sizes = tutorial_model(model, cfg), []
    hooks = [
        m.register_forward_hook(lambda m, i, o: sizes.append(o[0].numel()))
        for m in net.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.MaxPool2d))
    ]  # MLP: the widths after the input
    with torch.no_grad():
        net.eval()(torch.zeros(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    params = sum(p.numel() for p in net.parameters())
    acts = cfg["batch_size"] * (784 + sum(sizes)) * 4 * 3
    return cfg["batch_size"] * flops_per_sample(model, cfg) / (6 * 4 * params + acts)


COLUMNS = (
    "workload",
    "mode",
    "group",
    "cell_samples_per_s",
    "cells_per_hour",
    "speedup",
    "gflops",
    "roofline_gflops",
    "pct_roofline",
    "train_s",
    "eval_s",
    "error",
)


def row(name, mode, g, samples, secs, eval_s, limits, tut) -> dict:
    """A measurement's row: its rate, projected cells/hour, speedup over the tutorial loop's rate
    `tut` (blank without one) and share of the roofline bound min(peak, bandwidth x intensity)."""
    _, model, cfg = WORKLOADS[name]
    (peak, bw), rate, fps = limits, samples / secs, flops_per_sample(model, cfg)
    bound = min(peak, bw * intensity(model, cfg))
    # a cell's epoch: 60,000 samples at the measured rate, then its share of the group's test pass
    epoch_s = 60_000 / rate + (eval_s or 0.0) / g
    return dict(
        workload=name,
        mode=mode,
        group=g,
        cell_samples_per_s=round(rate),
        cells_per_hour=round(3600 / (cfg["epochs"] * epoch_s), 1),
        speedup=round(rate / tut, 2) if tut else "",
        gflops=round(rate * fps / 1e9, 2),
        roofline_gflops=round(bound / 1e9, 1),
        pct_roofline=round(100 * rate * fps / bound, 1),
        train_s=round(secs, 4),
        eval_s="" if eval_s is None else round(eval_s, 4),
        error="",
    )


def failed(name, mode, g, exc: BaseException) -> dict:
    """The row of a measurement that raised: its exception's type and first line, nothing else."""
    lines = str(exc).strip().splitlines()
    error = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    blank = dict.fromkeys(COLUMNS, "")
    return {**blank, "workload": name, "mode": mode, "group": g, "error": error}


def measure(args, device, names, limits, rows: list) -> None:
    """Each workload's tutorial loop, then its groups (`double`); every row goes to `rows` and to
    args.csv as soon as it is measured. With --budget, each workload gets an equal share of it."""
    cache, start = datasets.cache_dir() / "torchvision", time.perf_counter()

    def keep(r: dict) -> None:
        append_row(args.csv, r)
        rows.append(r)

    for i, name in enumerate(names):
        dataset, model, cfg = WORKLOADS[name]
        deadline = start + args.budget * (i + 1) / len(names) if args.budget else math.inf
        tut = None
        try:
            runs = [
                tutorial_epoch(dataset, model, cfg, device, args.limit, cache)
                for _ in range(args.repeat)
            ]
            n, s = min(runs, key=lambda t: t[1])
            tut = n / s
            keep(row(name, "tutorial", 1, n, s, None, limits, tut))
        except Exception as e:  # torchvision's loader, say: ablate's groups are measured anyway
            keep(failed(name, "tutorial", 1, e))
        why = double(args, device, name, limits, tut, deadline, keep)
        print(f"{name}: groups stopped: {why}", flush=True)
        gc.collect()  # a failed group's tensors, held by reference cycles from its traceback
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next workload starts with the card's memory free


def double(args, device, name, limits, tut, deadline, keep) -> str:
    """Groups of 1, 2, 4, ... up to args.top, each kept as measured; with --until-flat, until a
    doubling gains less than that percentage; the first group size that raises ends it (its row
    says why). Returns why the doubling stopped."""
    dataset, model, cfg = WORKLOADS[name]
    g, rate, took = 1, 0.0, 0.0
    while g <= args.top:
        mode = "ablate" if g == 1 else "fused"
        # a doubled group takes up to twice as long: start it only if the share still holds it
        if g > 1 and time.perf_counter() + 2 * took > deadline:
            return f"--budget: no time left for a group of {g}"
        began = time.perf_counter()
        try:
            samples, secs, eval_s = ablate_epoch(
                dataset, model, cfg, device, args.limit, g, args.precision, args.repeat
            )
        except Exception as e:  # cuDNN refusing a large grouped convolution, out of memory, ...
            keep(failed(name, mode, g, e))
            if engine.is_oom(e):
                return f"a group of {g} ran out of memory"
            return f"a group of {g} failed: {failed(name, mode, g, e)['error']}"
        took = time.perf_counter() - began
        keep(row(name, mode, g, samples, secs, eval_s, limits, tut))
        print(
            f"{name} G={g}: {samples / secs:,.0f} cell-samples/s, test pass {eval_s:.2f} s "
            f"({took:.1f} s with building and warm-up)",
            flush=True,
        )
        # judged among fused groups: G=2 against the plain path could stop a vmapped model early
        if (
            args.until_flat is not None
            and g > 2
            and samples / secs < rate * (1 + args.until_flat / 100)
        ):
            return f"flat: G={g} gained less than {args.until_flat}% over G={g // 2}"
        rate, g = samples / secs, g * 2
    return f"reached --max-group {args.top}"


def print_table(rows) -> None:
    print(
        f"\n{'workload':10} {'mode':8} {'G':>4} {'cell-samples/s':>15} {'cells/h':>8} "
        f"{'speedup':>8} {'GFLOP/s':>8} {'bound':>8} {'% bound':>8} {'eval s':>7}"
    )
    for r in rows:
        head = f"{r['workload']:10} {r['mode']:8} {r['group']:>4}"
        if r["error"]:
            print(f"{head} failed: {r['error']}")
            continue
        speedup = "-" if r["speedup"] == "" else f"{r['speedup']}x"
        print(
            f"{head} {r['cell_samples_per_s']:>15,} {r['cells_per_hour']:>8} {speedup:>8} "
            f"{r['gflops']:>8} {r['roofline_gflops']:>8} {r['pct_roofline']:>7}% "
            f"{r['eval_s'] if r['eval_s'] != '' else '-':>7}"
        )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--workload",
        choices=[*WORKLOADS, "both", "all"],
        default="both",
        help="both: the two MLPs; all: the MLPs and the CNN",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--max-group",
        type=int,
        default=None,
        help="largest group (default 16 on CPU, 512 on GPU; 65536 with --until-flat)",
    )
    ap.add_argument(
        "--until-flat",
        type=float,
        default=None,
        metavar="PCT",
        help="keep doubling the group until a doubling gains less than PCT%% of cell-samples/s "
        "(or a group size fails: out of memory, a cuDNN error)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start no new group past this many seconds (an equal share per workload)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="6,400-sample epochs and groups up to 4: a smoke run",
    )
    ap.add_argument("--csv", default="benchmarks/throughput.csv")
    ap.add_argument(
        "--repeat", type=int, default=2, help="epochs timed per mode; the fastest counts"
    )
    ap.add_argument(
        "--precision",
        choices=["fp32", "tf32", "bf16"],
        default="fp32",
        help="ablate's recipe precision (the tutorial loop stays fp32, as the tutorials run)",
    )
    return ap


def interrupt(signum, frame):
    """`timeout`'s SIGTERM as a Ctrl-C: measuring stops and the table of the rows kept prints."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main():
    args = parser().parse_args()
    device = engine.pick_device(args.device)
    engine.configure(deterministic=False)
    args.limit = 6400 if args.quick else 0
    default = 4 if args.quick else 512 if device.type == "cuda" else 16
    # --until-flat: the flattening (or a failing group) ends the doubling, not a fixed largest
    args.top = args.max_group or (
        65536 if args.until_flat is not None and not args.quick else default
    )
    names = {"both": ["reference", "fashion"], "all": list(WORKLOADS)}.get(
        args.workload, [args.workload]
    )
    print(
        f"device: {device_name(device)}; precision {args.precision}; "
        f"torch {torch.__version__}, {platform.python_version()}; {time.strftime('%Y-%m-%d')}"
    )
    # before the runs, so that each row is whole when written (a known GPU's datasheet: no cost;
    # elsewhere measured, a few seconds)
    peak, bw, how = device_limits(device, args.precision)
    print(f"roofline inputs: {how}", flush=True)
    Path(args.csv).unlink(missing_ok=True)
    rows, stopped = [], None
    signal.signal(signal.SIGTERM, interrupt)
    try:
        measure(args, device, names, (peak, bw), rows)
    except KeyboardInterrupt as e:
        stopped = str(e) or "interrupted"
        print(f"stopped ({stopped}): the table holds the {len(rows)} rows measured before")
    print_table(rows)
    print(
        "\ncell-samples/s, speedup, GFLOP/s: the training steps alone; eval s: a group's test "
        "pass (10,000 images, all its cells), timed apart; cells/h: whole cells of the "
        "workload's recipe (reference: 10 epochs, fashion: 30, cnn: 40) per hour, each epoch "
        "60,000 samples at that rate plus the cell's share of the test pass (the tutorial "
        "loop has none)"
    )
    print(
        f"written: {args.csv} ({len(rows)} rows); bound = min(peak, bandwidth x intensity); "
        "intensity " + ", ".join(f"{n}: {intensity(*WORKLOADS[n][1:]):.1f} FLOP/B" for n in names)
    )
    # a failing larger group is a finding (its row says why); the tutorial loop or the plain
    # path failing, or a run cut short, is not
    done = {(r["workload"], r["mode"]) for r in rows if not r["error"]}
    whole = all((n, mode) in done for n in names for mode in ("tutorial", "ablate"))
    return 0 if whole and stopped is None else 1


if __name__ == "__main__":
    sys.exit(main())
