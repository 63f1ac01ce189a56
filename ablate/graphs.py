"""A fused group's training step captured once as a CUDA graph and replayed: one launch a step.

A reference group's eager step dispatches about 80 operations (benchmarks/launches.py), each a
kernel launch of a few microseconds of CPU time, against a few microseconds of GPU work per
small GEMM: eager, the GPU waits on the launches. The step reads its batch and its dropout keys
at a step index kept on the device (loop.Step) from buffers that keep their addresses across
epochs (loop.Batches, fused.Stack.begin_epoch), so one capture replays every full batch of
every epoch. The epoch's last, shorter batch and the evaluation run eagerly.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

# eager steps on a side stream before the capture, as torch.cuda.graphs asks: cuBLAS and cuDNN
# pick their algorithms and workspaces, autograd builds its lazy state
WARMUP = 3


def wanted(group, device, trace) -> bool:
    """Capture where the device is a GPU, the group says its step can be replayed (fused.Stack
    whose optimizer steps in the backward, SGD: no host-side step count), no per-step losses are
    asked for (`trace` syncs), and ABLATE_CUDA_GRAPHS is not 0 (the eager path, to compare or to
    debug)."""
    return (
        torch.device(device).type == "cuda"
        and getattr(group, "graphable", False)
        and trace is None
        and os.environ.get("ABLATE_CUDA_GRAPHS", "1") != "0"
    )


class Replayed:
    """Calls `step` eagerly WARMUP times on a side stream, captures it on the next call (and
    replays that capture for it), then replays. A capture that fails says so once, as a warning,
    and every later call runs eagerly: the graph is a speed-up, never a requirement. Each call,
    eager or replayed, is one real training step."""

    def __init__(self, step: Callable[[], None]):
        self.step, self.calls = step, 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        self.calls += 1
        if self.failed:
            self.step()
        elif self.calls <= WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step()
            torch.cuda.current_stream().wait_stream(side)
        else:
            self.capture()

    def capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):  # records the kernels; nothing runs, nothing changes
                self.step()
        except Exception as e:  # an operation that cannot be captured; eager still works
            self.failed = True
            torch.cuda.synchronize()
            warnings.warn(
                f"the training step runs eagerly: capturing it as a CUDA graph failed "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                stacklevel=2,
            )
            self.step()
            return
        self.graph = graph
        graph.replay()
