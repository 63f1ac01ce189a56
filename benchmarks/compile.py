"""Does torch.compile pay for the fused step? Eager against compiled, side by side in one run.

The same group (the reference MLP or the Fashion-MNIST MLP, G cells) trains --steps steps
from the same init twice: once eager as fused.train runs it (SGD stepping the weights inside
the backward, fused.SGDLinear), once with the forward and loss compiled (AOTAutograd compiles
the backward too; the weights' gradients are stored and the optimizer step stays eager). Prints
the compile time, the steady-state step time of each, their ratio, and how far the
compiled losses drift from the eager ones (fusion reorders floating-point sums).
On CUDA the default mode is "reduce-overhead", which replays the step as CUDA graphs.

    python benchmarks/compile.py [--workload reference|fashion] [--group 16] [--steps 600]
        [--mode ...] [--csv PATH]  (appends one row: the figures printed last)
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from throughput import WORKLOADS, append_row, sync  # noqa: E402

from ablate import data as datasets  # noqa: E402
from ablate import engine, fused, loop, models, rng  # noqa: E402
from ablate.local import device_name  # noqa: E402
from ablate.study import Study, cells, validate  # noqa: E402

WARMUP = 20  # steps before timing: compilation, allocator and cache warm-up


def group(name: str, g: int, device, data):
    """A fresh Stack and Optimizer for G seeds of the workload's baseline cell."""
    dataset, model, cfg = WORKLOADS[name]
    cs = cells(
        validate(
            Study(name="bench", dataset=dataset, model=model, base={**cfg, "epochs": 1}, seeds=g)
        )
    )
    nets = [models.build(model, c.config, data.shape, data.classes, c.seed) for c in cs]
    s = fused.Stack(nets, device, cs)
    return cs, s, s.optimizer


def train(loss_fn, s, opt, cs, data, steps: int, device) -> tuple[list[float], float, float]:
    """Per-step summed losses, seconds of the first WARMUP steps, seconds per step after them."""
    bs, norm = cs[0].config["batch_size"], False
    seeds = torch.tensor([[c.seed] for c in cs], device=device)
    order = rng.permutation(rng.key(seeds, rng.ORDER, 1), len(data.train_x), device)
    losses, start, warm = [], time.perf_counter(), 0.0
    s.begin_epoch(0, steps)  # the dropout keys of steps 0..steps-1, hashed once
    for i in range(steps):
        if i == WARMUP:
            sync(device)
            warm, start = time.perf_counter() - start, time.perf_counter()
        idx = order[:, (i * bs) % (len(data.train_x) - bs) :][
            :, :bs
        ]  # full batches only: one graph shape
        x = loop.prepare(data, data.train_x[idx], norm, None)
        # filled on the device: torch.tensor(i, device=...) copies from the host and, on a GPU,
        # waits for every queued kernel each step
        step = torch.full((1,), i, dtype=torch.int64, device=device)
        loss = loss_fn(s, x, data.train_y[idx], step)
        loss.sum().backward()
        opt.step()
        losses.append(loss.detach().sum())
    sync(device)
    per_step = (time.perf_counter() - start) / (steps - WARMUP)
    return [v.item() for v in losses], warm, per_step


def step_loss(s, x, y, step):
    """The fused step's forward and loss, as fused.train computes them."""
    return loop.cell_losses(s.forward(x, True, step), y, "cross_entropy", "mean")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["reference", "fashion"], default="reference")
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument(
        "--rounds", type=int, default=2, help="eager and compiled alternated this many times"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--mode",
        default=None,
        help="torch.compile mode (default: reduce-overhead on CUDA, else default)",
    )
    ap.add_argument("--csv", default=None, help="append the figures as one row to this CSV")
    args = ap.parse_args()
    if args.steps <= WARMUP:
        ap.error(f"--steps must be more than the {WARMUP} warm-up steps")
    device = engine.pick_device(args.device)
    engine.configure(deterministic=False)
    mode = args.mode or ("reduce-overhead" if device.type == "cuda" else "default")
    data = datasets.load(WORKLOADS[args.workload][0], device)
    print(
        f"device: {device_name(device)}; torch {torch.__version__}, {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}; {args.workload} MLP, G={args.group}, {args.steps} steps, "
        f"mode {mode}"
    )
    compiled = torch.compile(step_loss, mode=mode, dynamic=False)
    runs: dict[str, list] = {"eager": [], "compiled": []}
    for r in range(args.rounds):  # alternated: a shared CPU's speed drifts
        for label, fn in (("eager", step_loss), ("compiled", compiled)):
            cs, s, opt = group(args.workload, args.group, device, data)
            runs[label].append(train(fn, s, opt, cs, data, args.steps, device))
            losses, warm, per_step = runs[label][-1]
            print(
                f"round {r + 1} {label:9} first {WARMUP} steps {warm:7.2f} s, "
                f"then {per_step * 1e3:8.3f} ms/step"
            )
    eager, comp = (min(t[2] for t in runs[k]) for k in ("eager", "compiled"))
    drift = max(
        abs(a - b) / abs(a)
        for a, b in zip(runs["eager"][0][0], runs["compiled"][0][0], strict=True)
    )
    print(
        f"best of {args.rounds}: eager {eager * 1e3:.3f} ms/step, compiled {comp * 1e3:.3f} "
        f"ms/step; compiled is {eager / comp:.2f}x eager's speed; largest relative loss "
        f"difference over {args.steps} steps: {drift:.1e}"
    )
    if args.csv:
        row = dict(
            date=time.strftime("%Y-%m-%d"),
            device=device_name(device),
            torch=torch.__version__,
            workload=args.workload,
            group=args.group,
            steps=args.steps,
            mode=mode,
            eager_ms_per_step=round(eager * 1e3, 4),
            compiled_ms_per_step=round(comp * 1e3, 4),
            compiled_speed_vs_eager=round(eager / comp, 3),
            # the first WARMUP steps of the first compiled round: compilation and graph capture
            compiled_first_steps_s=round(runs["compiled"][0][1], 2),
            eager_first_steps_s=round(runs["eager"][0][1], 2),
            max_rel_loss_diff=f"{drift:.2e}",
        )
        append_row(args.csv, row)
        print(f"appended to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
