"""Operations per fused training step: how many aten operations a group's step dispatches.

On a GPU each operation is at least one kernel launch, and a step of small GEMMs is bound by
launches, not arithmetic; the count is exact and the same on any device, so it is measured
here on the CPU. A group of --group seeds of a reference-study cell trains two runs of one
epoch, --steps and 2 x --steps batches long, under a TorchDispatchMode that counts every
operation (forward, backward, optimizer step; the autograd engine's too); their difference
divided by --steps is the count per step, so the epoch's own work (order, evaluation) cancels.

    python benchmarks/launches.py [--group 10] [--steps 10] [--ops] [--csv PATH]

Prints a line per cell: the count, the target (issue 26) and, with --ops, each operation's.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from throughput import append_row  # noqa: E402

from ablate import engine, fused, loop  # noqa: E402
from ablate.data import load  # noqa: E402
from ablate.study import Study, cells, validate  # noqa: E402

REFERENCE = dict(  # studies/mnist_mlp.py's baseline cell
    hidden=(512, 256), activation="sigmoid", dropout=0.5, lr=0.01, momentum=0.5, batch_size=32
)
CELLS = {  # name: (the cell's keys over REFERENCE, at most this many operations a step)
    "reference": ({}, 90),
    "relu+batchnorm": (dict(activation="relu", batchnorm=True), 130),
}


class Counted(TorchDispatchMode):
    """Counts the aten operations dispatched inside it, by name."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def epoch_ops(keys: dict, group: int, steps: int, data) -> Counter:
    """The operations of one epoch of `steps` batches for a fused group of `group` seeds."""
    base = {**REFERENCE, **keys, "epochs": 1, "train_subset": REFERENCE["batch_size"] * steps}
    cs = cells(validate(Study(name="ops", dataset="mnist", base=base, seeds=group)))
    stack = fused.group(cs, data, "cpu")
    with Counted() as counted:
        loop.train(stack, cs, data, "cpu")
    return counted.ops


def step_ops(keys: dict, group: int = 10, steps: int = 10, data=None) -> Counter:
    """Operations per group step by name: an epoch of 2 x `steps` batches minus one of `steps`,
    over `steps` (each count a whole number: every step dispatches the same operations)."""
    data = data or load("mnist", "cpu")
    epoch_ops(keys, group, 2, data)  # warm-up: cached counters and hashes are built once
    short, long = epoch_ops(keys, group, steps, data), epoch_ops(keys, group, 2 * steps, data)
    long.subtract(short)
    return Counter({op: n // steps for op, n in long.items() if n})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", type=int, default=10, help="cells in the group (seeds)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--ops", action="store_true", help="print each operation's count")
    ap.add_argument("--csv", default=None, help="append a row per cell to this CSV")
    args = ap.parse_args()
    engine.configure(deterministic=False)
    data = load("mnist", "cpu")
    over = False
    for name, (keys, target) in CELLS.items():
        ops = step_ops(keys, args.group, args.steps, data)
        total = sum(ops.values())
        over |= total > target
        print(f"{name:15s} {total:4d} operations a group step (target <= {target})")
        if args.ops:
            print("    " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
        if args.csv:
            append_row(
                args.csv,
                dict(
                    cell=name, group=args.group, ops=total, target=target, torch=torch.__version__
                ),
            )
    return int(over)


if __name__ == "__main__":
    sys.exit(main())
