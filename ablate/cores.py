"""CPU threads sized to the cores other processes leave free: a busy machine slows, not stops.

OpenMP's threads wait at the end of every parallel op for the slowest of them; when another
process holds one of the cores, that thread runs only in the scheduler's gaps, and every op
waits for it. On this 2-core machine a run with one core taken took 2-6x its time alone
(benchmarks/busy_cpu.py). Waiting passively (OMP_WAIT_POLICY=PASSIVE) cured that but cost 42%
on a quiet machine, since a sleeping thread wakes late for each of the many small ops of a
training step. So the threads stay as they are, and their number follows the cores left free:
measured from /proc/stat (the whole machine's busy time) less this process's own CPU time,
over the last interval. Linux only; elsewhere, and where the user set OMP_NUM_THREADS or
torch.set_num_threads, nothing changes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

EVERY = 2.0  # seconds between looks: a step is milliseconds, a change of load is seconds
BUSY_SHARE = 0.5  # another process using more than half a core holds that core


def machine_ticks(stat: str) -> tuple[int, int]:
    """(busy, total) clock ticks of all cores from /proc/stat's first line."""
    fields = [int(v) for v in stat.split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal; guest is in user
    return total - idle, total


def own_ticks(stat: str) -> int:
    """This process's user + system clock ticks from /proc/self/stat (all its threads)."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of the line


def free_cores(before: tuple, after: tuple, cores: int) -> int:
    """Cores left by other processes between two readings of (busy, total, own) ticks."""
    busy, total, own = (a - b for a, b in zip(after, before, strict=True))
    if total <= 0:
        return cores
    others = max(0.0, (busy - own) / (total / cores))  # cores' worth of other processes' work
    return max(1, cores - int(others + 1 - BUSY_SHARE))


class CoreShare:
    """Keeps torch's intra-op threads at the cores other processes leave free; adjust() is cheap
    and may be called often (it looks at most every EVERY seconds)."""

    def __init__(self):
        self.cores = torch.get_num_threads()
        chosen = "OMP_NUM_THREADS" in os.environ or self.cores != (os.cpu_count() or 1)
        self.active = not chosen and Path("/proc/stat").is_file() and self.cores > 1
        self.last, self.reading = 0.0, self._read() if self.active else None

    def _read(self) -> tuple[int, int, int]:
        busy, total = machine_ticks(Path("/proc/stat").read_text())
        return busy, total, own_ticks(Path("/proc/self/stat").read_text())

    def adjust(self, *_) -> None:
        """Set the threads from the load since the last look (any arguments are ignored, so it can
        ride on an epoch callback)."""
        now = time.monotonic()
        if not self.active or now - self.last < EVERY:
            return
        reading = self._read()
        threads = free_cores(self.reading, reading, self.cores)
        self.last, self.reading = now, reading
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    def restore(self) -> None:
        """Give torch back the threads it had, for whatever the process does next (a notebook)."""
        if self.active and torch.get_num_threads() != self.cores:
            torch.set_num_threads(self.cores)
