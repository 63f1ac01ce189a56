"""Does stepping SGD inside the backward pay? The fused step both ways, side by side in one run.

The same group (the reference MLP or the Fashion-MNIST MLP, G cells, with --set overrides
of its shape and hyperparameters) trains --steps steps from the same init, alternated
--rounds times: once as ablate runs it, each weight's SGD step taken in the backward
(fused.SGDLinear: the weight-gradient GEMM accumulates into the momentum buffer), once with
the weights' gradients stored and stepped by Optimizer.step afterwards, as before. The step
is compile.py's (forward, loss, backward, step; batches gathered by indexing; no flips,
normalisation or autocast), its first 20 steps untimed. Prints each way's best and median
ms/step, how many weight steps each took in the backward, the speedup and how far their
losses drift apart (the same sums, rounded in another order).

    python benchmarks/sgd_step.py [--workload reference|fashion] [--group 10] [--steps 300]
        [--rounds 3] [--set activation=relu --set batchnorm=True] [--device auto] [--csv PATH]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from compile import WARMUP, step_loss, train  # noqa: E402
from throughput import WORKLOADS, append_row  # noqa: E402

from ablate import data as datasets  # noqa: E402
from ablate import engine, fused, loop, models  # noqa: E402
from ablate.local import device_name  # noqa: E402
from ablate.study import Study, cells, validate  # noqa: E402
from ablate.studyfile import parse_set  # noqa: E402


def group(name: str, g: int, sets: dict, device, data, folded: bool):
    """A fresh Stack of G seeds of the workload's cell; `folded` False stores the weights'
    gradients and leaves their step to Optimizer.step."""
    dataset, model, cfg = WORKLOADS[name]
    base = {**cfg, **sets, "epochs": 1}
    cs = cells(validate(Study(name="bench", dataset=dataset, model=model, base=base, seeds=g)))
    dtype = loop.DTYPES[base.get("precision", "fp32")]
    nets = [models.build(model, c.config, data.shape, data.classes, c.seed).to(dtype) for c in cs]
    stack = fused.Stack(nets, device, cs)
    if not folded:
        stack.optimizer.fold = False
    elif not stack.optimizer.fold:
        raise SystemExit("this cell's weights step after the backward anyway (Adam or bf16)")
    steps = [0]  # the weight steps taken in the backward
    taken = stack.optimizer.step_with_product

    def counted(*args):
        steps[0] += 1
        taken(*args)

    stack.optimizer.step_with_product = counted
    return cs, stack, steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["reference", "fashion"], default="reference")
    ap.add_argument("--group", type=int, default=10, help="cells in the group (a study shape's 10)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3, help="both ways, alternated this many times")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--csv", default=None, help="append the figures as one row to this CSV")
    args = ap.parse_args()
    if args.steps <= WARMUP:
        ap.error(f"--steps must be more than the {WARMUP} warm-up steps")
    sets = dict(parse_set(item) for item in args.sets)
    device = engine.pick_device(args.device)
    engine.configure(deterministic=False)
    data = datasets.load(WORKLOADS[args.workload][0], device)
    shown = " ".join(args.sets) or "the baseline cell"
    print(
        f"device: {device_name(device)}; torch {torch.__version__}, {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}; {args.workload} MLP ({shown}), G={args.group}, "
        f"{args.steps} steps x {args.rounds} rounds"
    )
    runs: dict[str, list] = {"in backward": [], "after": []}
    for r in range(args.rounds):  # alternated: a shared CPU's speed drifts
        for label in runs:
            folded = label == "in backward"
            cs, stack, steps = group(args.workload, args.group, sets, device, data, folded)
            losses, _, per_step = train(
                step_loss, stack, stack.optimizer, cs, data, args.steps, device
            )
            runs[label].append((losses, per_step))
            print(
                f"round {r + 1} {label:11} {per_step * 1e3:8.3f} ms/step; "
                f"{steps[0]} weight steps in the backward"
            )
    best = {k: min(t for _, t in v) for k, v in runs.items()}
    median = {k: statistics.median(t for _, t in v) for k, v in runs.items()}
    first_round_losses = [run[0][0] for run in runs.values()]
    drift = max(abs(a - b) / abs(a) for a, b in zip(*first_round_losses, strict=True))
    speedup = best["after"] / best["in backward"]
    print(
        f"best of {args.rounds}: in the backward {best['in backward'] * 1e3:.3f} ms/step "
        f"(median {median['in backward'] * 1e3:.3f}), after it {best['after'] * 1e3:.3f} "
        f"(median {median['after'] * 1e3:.3f}): {speedup:.2f}x the speed; largest relative loss "
        f"difference over the {args.steps} steps: {drift:.1e}"
    )
    if args.csv:
        row = dict(
            date=time.strftime("%Y-%m-%d"),
            device=device_name(device),
            torch=torch.__version__,
            workload=args.workload,
            sets=" ".join(args.sets),
            group=args.group,
            steps=args.steps,
            rounds=args.rounds,
            in_backward_best_ms=round(best["in backward"] * 1e3, 4),
            after_best_ms=round(best["after"] * 1e3, 4),
            in_backward_median_ms=round(median["in backward"] * 1e3, 4),
            after_median_ms=round(median["after"] * 1e3, 4),
            in_backward_speedup=round(speedup, 3),
            max_rel_loss_diff=f"{drift:.2e}",
        )
        append_row(args.csv, row)
        print(f"appended to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
