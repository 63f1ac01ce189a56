"""The CUDA-graph step's plumbing on the CPU: warm-up, one capture, replays, the eager fallback,
and the buffers a captured step reads keeping their addresses across epochs."""

import contextlib
import types
import warnings

import pytest
import torch

from ablate import fused, graphs, loop, optim
from ablate.data import load
from ablate.study import Study, cells, validate


class FakeCuda:
    """torch.cuda's stream and graph calls, recorded as events; a fake graph's replay calls the
    step, as a real one replays the kernels its capture recorded."""

    def __init__(self, monkeypatch, step, fail=False):
        self.events = []
        events = self.events

        class Graph:
            def replay(self):
                events.append("replay")
                step()

        @contextlib.contextmanager
        def graph(g):
            events.append("capture")
            yield
            if fail:
                raise RuntimeError("operation not permitted when stream is capturing")

        def stream():
            return types.SimpleNamespace(wait_stream=lambda other: None)

        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "Stream", stream)
        monkeypatch.setattr(torch.cuda, "current_stream", stream)
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)


def test_a_replayed_step_warms_up_captures_once_and_then_replays(monkeypatch):
    ran = []
    fake = FakeCuda(monkeypatch, lambda: ran.append("replayed"))
    replayed = graphs.Replayed(lambda: ran.append(fake.events[-1] if fake.events else "eager"))
    for _ in range(graphs.WARMUP + 4):
        replayed()
    # warm-up steps run eagerly; the capture records the step once (a real capture runs
    # nothing) and replays it for its own call; every later call replays
    assert fake.events == ["capture"] + ["replay"] * 4, fake.events
    assert ran == ["eager"] * graphs.WARMUP + ["capture"] + ["replayed"] * 4, ran
    assert replayed.graph is not None


def test_a_step_that_cannot_be_captured_warns_once_and_runs_eagerly(monkeypatch):
    steps = []
    fake = FakeCuda(monkeypatch, lambda: steps.append("replayed"), fail=True)
    replayed = graphs.Replayed(lambda: steps.append("eager"))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for _ in range(graphs.WARMUP + 5):
            replayed()
    # the failed capture's recording called the step (a real capture runs nothing), then every
    # call from the failing one on runs eagerly; nothing is replayed
    assert steps == ["eager"] * (graphs.WARMUP + 1 + 5), steps
    assert fake.events == ["capture"] and replayed.graph is None
    assert [str(w.message) for w in said] == [
        "the training step runs eagerly: capturing it as a CUDA graph failed (RuntimeError: "
        "operation not permitted when stream is capturing)"
    ]


def group(**keys):
    base = dict(hidden=(16, 8), dropout=0.3, hflip=True, batchnorm=True, batch_size=32)
    base = {**base, "epochs": 3, "train_subset": 32 * 4 + 5, **keys}
    return cells(validate(Study(name="t", dataset="digits", base=base, seeds=3)))


def test_the_buffers_a_captured_step_reads_keep_their_addresses_across_epochs(monkeypatch):
    data = load("digits", "cpu")
    cs = group()
    stack = fused.group(cs, data, "cpu")
    seen = []
    begin = stack.begin_epoch

    def recording(first, steps):
        begin(first, steps)
        seen.append(stack.keys.data_ptr())

    stack.begin_epoch = recording
    steps = []
    original = loop.Step

    class Recorded(original):
        def begin(self):
            super().begin()
            b = self.batches
            steps.append(
                [t.data_ptr() for t in (self.t, self.total, b.order, b.labels, b.flips)]
                + [v.data_ptr() for v in self.views]
            )

    monkeypatch.setattr(loop, "Step", Recorded)
    loop.train(stack, cs, data, "cpu")
    assert len(seen) == len(steps) == 3
    assert len(set(seen)) == 1 and all(s == steps[0] for s in steps), (seen, steps)


def test_only_a_fused_sgd_group_on_a_gpu_without_a_trace_is_captured(monkeypatch):
    data = load("digits", "cpu")
    sgd, adam = fused.group(group(), data, "cpu"), fused.group(group(optimizer="adam"), data, "cpu")
    assert graphs.wanted(sgd, "cuda", None) and not graphs.wanted(sgd, "cpu", None)
    assert not graphs.wanted(adam, "cuda", None)  # Adam counts its steps on the host
    # captured: a rule that steps in the backward (optim.Rule.product), which counts no steps
    for name, rule in optim.RULES.items():
        stack = fused.group(group(optimizer=name), data, "cpu")
        assert graphs.wanted(stack, "cuda", None) == (rule.product is not None), name
    assert not graphs.wanted(sgd, "cuda", [])  # a trace syncs every step
    monkeypatch.setenv("ABLATE_CUDA_GRAPHS", "0")
    assert not graphs.wanted(sgd, "cuda", None)


@pytest.mark.parametrize("precision", ["bf16"])
def test_a_bf16_group_is_not_captured(precision):
    data = load("digits", "cpu")
    assert not graphs.wanted(fused.group(group(precision=precision), data, "cpu"), "cuda", None)
