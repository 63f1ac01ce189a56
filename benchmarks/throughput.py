"""Throughput, side by side in one run: the tutorial loop vs ablate's plain path vs fused groups.

(a) tutorial: torchvision MNIST + ToTensor + DataLoader(shuffle=True), one model, .to(device) per batch;
(b) ablate, groups of 1 (the plain path); (c) ablate fused, groups of 2, 4, ... up to --max-group.
Every measurement is the fastest of --repeat full epochs (or --quick's subsets) after a warm-up,
on the same device; the GEMM peak and copy bandwidth are measured after the runs.

    python benchmarks/throughput.py [--workload reference|fashion|cnn|both|all] [--device auto]
        [--quick] [--until-flat PCT] [--budget SECONDS] [--csv PATH]

--until-flat keeps doubling the group (past --max-group's default) until a doubling gains less
than PCT percent of cell-samples/s; --budget stops starting new groups when the time runs out.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ablate import data as datasets  # noqa: E402
from ablate import engine  # noqa: E402
from ablate.runner import device_name  # noqa: E402
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
WORKLOADS = {  # the reference study's baseline cell, the Fashion-MNIST tutorial's MLP, the examples CNN
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
    model = tutorial_model(model_name, cfg).to(device)
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
    return len(ds), time.perf_counter() - start


def ablate_epoch(name, model, cfg, device, limit, g, precision="fp32") -> tuple[int, float]:
    """G cells (seeds 0..G-1) for one epoch through engine.train; returns (cell-samples, seconds)."""
    data = datasets.load(name, device)
    base = {**cfg, "epochs": 1, "train_subset": limit or None, "precision": precision}
    group = cells(validate(Study(name="bench", dataset=name, model=model, base=base, seeds=g)))
    warm = cells(
        validate(
            Study(
                name="bench",
                dataset=name,
                model=model,
                base={**base, "train_subset": 50 * cfg["batch_size"]},
                seeds=g,
            )
        )
    )
    engine.train(warm, data, model, device)
    sync(device)
    start = time.perf_counter()
    engine.train(group, data, model, device)
    sync(device)
    n = limit or len(data.train_x)
    return g * n, time.perf_counter() - start


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
                    f"{name}: datasheet {precision} {peak / 1e12:.1f} TFLOP/s, {bw / 1e12:.2f} TB/s",
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
            f"{'bf16' if precision == 'bf16' else 'fp32'} GEMM 2048^3 measured {peak / 1e9:.0f} GFLOP/s; "
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


def measure(args, device, names, limit, top, cache) -> list[tuple]:
    """(workload, mode, group, cell-samples, seconds) for the tutorial loop, then groups of 1, 2,
    4, ... up to `top`; with --until-flat, until a doubling gains less than that percentage; with
    --budget, each workload gets an equal share of it and starts no group its share cannot hold."""
    best = lambda fn, *a: min((fn(*a) for _ in range(args.repeat)), key=lambda t: t[1])  # noqa: E731
    measured, start = [], time.perf_counter()
    for i, name in enumerate(names):
        dataset, model, cfg = WORKLOADS[name]
        deadline = start + args.budget * (i + 1) / len(names) if args.budget else math.inf
        n, s = best(tutorial_epoch, dataset, model, cfg, device, limit, cache)
        measured.append((name, "tutorial", 1, n, s))
        g, rate, took, why = 1, 0.0, 0.0, f"reached --max-group {top}"
        while g <= top:
            # a doubled group takes up to twice as long: start it only if the share still holds it
            if g > 1 and time.perf_counter() + 2 * took > deadline:
                why = f"--budget: no time left for a group of {g}"
                break
            began = time.perf_counter()
            try:
                samples, secs = best(
                    ablate_epoch, dataset, model, cfg, device, limit, g, args.precision
                )
            except torch.OutOfMemoryError:
                why = f"a group of {g} ran out of memory"
                break
            took = time.perf_counter() - began
            measured.append((name, "ablate" if g == 1 else "fused", g, samples, secs))
            print(f"{name} G={g}: {samples / secs:,.0f} cell-samples/s ({took:.1f} s)", flush=True)
            # judged among fused groups: G=2 against the plain path could stop a vmapped model early
            if (
                args.until_flat is not None
                and g > 2
                and samples / secs < rate * (1 + args.until_flat / 100)
            ):
                why = f"flat: G={g} gained less than {args.until_flat}% over G={g // 2}"
                break
            rate, g = samples / secs, g * 2
        print(f"{name}: groups stopped: {why}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next workload starts with the card's memory free
    return measured


def table(measured, peak, bw) -> list[dict]:
    """One row per measurement: rates, projected cells/hour, speedup and share of the roofline bound."""
    rows, tut = [], {}
    for name, mode, g, samples, secs in measured:
        _, model, cfg = WORKLOADS[name]
        rate = samples / secs
        tut.setdefault(name, rate)
        fps, bound = flops_per_sample(model, cfg), min(peak, bw * intensity(model, cfg))
        rows.append(
            dict(
                workload=name,
                mode=mode,
                group=g,
                cell_samples_per_s=round(rate),
                cells_per_hour=round(rate * 3600 / (cfg["epochs"] * 60_000), 1),
                speedup=round(rate / tut[name], 2),
                gflops=round(rate * fps / 1e9, 2),
                roofline_gflops=round(bound / 1e9, 1),
                pct_roofline=round(100 * rate * fps / bound, 1),
            )
        )
    return rows


def main():
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
        "(or memory runs out)",
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
        help="6,400-sample epochs and groups up to 4: a smoke run (ablate's epochs still end with the "
        "10,000-image test pass, so its rates read low)",
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
    args = ap.parse_args()
    device = engine.pick_device(args.device)
    engine.configure(deterministic=False)
    limit = 6400 if args.quick else 0
    default = 4 if args.quick else 512 if device.type == "cuda" else 16
    # --until-flat: the flattening (or memory) ends the doubling, not a fixed largest group
    top = args.max_group or (65536 if args.until_flat is not None and not args.quick else default)
    names = {"both": ["reference", "fashion"], "all": list(WORKLOADS)}.get(
        args.workload, [args.workload]
    )
    print(
        f"device: {device_name(device)}; precision {args.precision}; "
        f"torch {torch.__version__}, {platform.python_version()}; {time.strftime('%Y-%m-%d')}"
    )
    measured = measure(args, device, names, limit, top, datasets.cache_dir() / "torchvision")
    peak, bw, how = device_limits(
        device, args.precision
    )  # after the runs too: a shared CPU's speed drifts
    print(f"roofline inputs: {how}")
    rows = table(measured, peak, bw)
    print(
        f"\n{'workload':10} {'mode':8} {'G':>4} {'cell-samples/s':>15} {'cells/h':>8} {'speedup':>8} "
        f"{'GFLOP/s':>8} {'bound':>8} {'% bound':>8}"
    )
    for r in rows:
        print(
            f"{r['workload']:10} {r['mode']:8} {r['group']:>4} {r['cell_samples_per_s']:>15,} "
            f"{r['cells_per_hour']:>8} {r['speedup']:>7}x {r['gflops']:>8} {r['roofline_gflops']:>8} "
            f"{r['pct_roofline']:>7}%"
        )
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(
        "\ncells/h: whole cells of the workload's recipe (reference: 10 epochs, fashion: 30, cnn: 40) per hour; "
        "ablate's epochs include the test-set evaluation, the tutorial loop's do not"
    )
    print(
        f"written: {args.csv}; bound = min(peak, bandwidth x intensity); intensity "
        + ", ".join(f"{n}: {intensity(*WORKLOADS[n][1:]):.1f} FLOP/B" for n in names)
    )
    return 0 if math.isfinite(rows[-1]["speedup"]) else 1


if __name__ == "__main__":
    sys.exit(main())
