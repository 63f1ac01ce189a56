"""Threads sized to the cores other processes leave free: the /proc arithmetic, by hand."""

import torch

from ablate import cores

STAT = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n"
SELF = "4242 (python3 (ablate)) R 1 2 3 4 5 6 7 8 9 10 70 30 0 0 20 0 2 0 99"


def test_the_machine_and_own_ticks_are_read_from_proc():
    # busy: user + nice + system + irq + softirq + steal = 160; total adds idle and iowait: 980
    assert cores.machine_ticks(STAT) == (160, 980)
    assert cores.own_ticks(SELF) == 100  # utime 70 + stime 30, after a name with a ')' in it


def test_free_cores_count_what_other_processes_hold():
    # 2 cores, 100 ticks each over the interval: (busy, total, own)
    start = (0, 0, 0)
    assert cores.free_cores(start, (200, 200, 200), 2) == 2  # only ablate ran
    assert cores.free_cores(start, (200, 200, 100), 2) == 1  # another process held a core
    assert cores.free_cores(start, (140, 200, 100), 2) == 2  # it used 0.4 of a core: share it
    assert cores.free_cores(start, (200, 200, 0), 2) == 1  # never fewer than one thread
    assert cores.free_cores(start, (0, 0, 0), 2) == 2  # no time passed: nothing to say


def test_a_thread_count_the_user_chose_is_left_alone(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    share = cores.CoreShare()
    assert not share.active
    threads = torch.get_num_threads()
    share.adjust()
    assert torch.get_num_threads() == threads


def test_threads_follow_the_load_and_come_back_when_it_goes(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cores.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cores.torch, "get_num_threads", lambda: state["threads"])
    monkeypatch.setattr(cores.torch, "set_num_threads", lambda n: state.update(threads=n))
    state = {"threads": 2}
    readings = iter([(0, 0, 0), (200, 200, 100), (350, 400, 250)])
    monkeypatch.setattr(cores.CoreShare, "_read", lambda self: next(readings))
    clock = iter([10.0, 20.0])
    monkeypatch.setattr(cores.time, "monotonic", lambda: next(clock))
    share = cores.CoreShare()
    assert share.active
    share.adjust()  # another process held a core: one thread
    assert state["threads"] == 1
    share.adjust()  # 150 busy of 200, all ablate's: both cores free again
    assert state["threads"] == 2
    state["threads"] = 1
    share.restore()  # the run is over: torch gets back the threads it had
    assert state["threads"] == 2
