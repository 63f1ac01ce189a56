"""Fault injection for the tests, set through the environment: the only test code inside ablate.

Environment variables reach the subprocesses and Ray workers the tests start, where a monkeypatch
cannot. Neither is set in normal use, and each costs a dictionary lookup when unset.
"""

from __future__ import annotations

import os
import signal

OOM_ABOVE = "ABLATE_TEST_OOM_ABOVE"  # n: a group of more than n cells runs out of memory
KILL = "ABLATE_TEST_KILL"  # kind:n:point: SIGKILL at `point` of the n-th write of `kind`

_writes: dict[str, int] = {}


def too_large(group_size: int) -> bool:
    """Whether a group of this many cells is to run out of memory (engine.train raises it)."""
    limit = os.environ.get(OOM_ABOVE)
    return bool(limit) and group_size > int(limit)


def count_write(kind: str) -> None:
    """One more write of `kind` (parquet or manifest) has begun."""
    _writes[kind] = _writes.get(kind, 0) + 1


def kill_at(kind: str, point: str) -> None:
    """SIGKILL this process at `point` ("written": the temp file complete, not renamed;
    "renamed": before the folder's fsync) of the write KILL names, as a crash or power loss
    would."""
    spec = os.environ.get(KILL)
    if spec and spec.split(":") == [kind, str(_writes.get(kind, 0)), point]:
        os.kill(os.getpid(), signal.SIGKILL)
