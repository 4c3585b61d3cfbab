"""What else used the machine while a run was measured: the load average, the CPU time of
every other process, and the time the hypervisor stole. A run on a busy machine is flagged
``disturbed`` so that the report can say how much to trust a comparison.

CPU time comes from ``/proc/stat`` (the whole machine: user, nice, system, irq, softirq and
steal ticks) minus this process tree's own (``/proc/<pid>/stat`` of this process and its live
descendants, e.g. DataLoader workers, plus the children already reaped, from ``getrusage``).
Linux only; elsewhere the figures are NaN and no run is flagged.
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass

__all__ = ["DISTURBED_OTHER_SHARE", "DISTURBED_STEAL_SHARE", "Sample", "contention", "sample"]

DISTURBED_OTHER_SHARE = 0.10   # other processes used > 10 % of the machine's CPU time
DISTURBED_STEAL_SHARE = 0.05   # or the hypervisor stole > 5 % of it
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Sample:
    wall: float
    busy_s: float    # the whole machine's non-idle CPU seconds since boot
    steal_s: float
    own_s: float     # this process tree's CPU seconds


def _machine() -> tuple[float, float]:
    with open("/proc/stat") as handle:
        fields = handle.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK, steal / _TICK


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as handle:
                    todo += [int(c) for c in handle.read().split()]
        except OSError:
            continue
        found.append(parent)
    return found


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0.0


def sample() -> Sample:
    """The counters now."""
    try:
        busy, steal = _machine()
    except (OSError, ValueError):
        return Sample(time.perf_counter(), math.nan, math.nan, math.nan)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = sum(_cpu_s(pid) for pid in _descendants(os.getpid()))
    return Sample(time.perf_counter(), busy, steal, own + reaped.ru_utime + reaped.ru_stime)


def contention(before: Sample, after: Sample) -> dict[str, float | bool]:
    """Columns of a run row: load average at its end, other processes' CPU seconds and their
    share of the machine, stolen seconds, and whether the run counts as disturbed."""
    wall = max(after.wall - before.wall, 1e-9)
    capacity = wall * (os.cpu_count() or 1)
    other = max(0.0, (after.busy_s - before.busy_s) - (after.own_s - before.own_s))
    steal = after.steal_s - before.steal_s
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = math.nan
    other_share, steal_share = other / capacity, steal / capacity
    return {"load1": load1, "other_cpu_s": other, "other_cpu_share": other_share,
            "steal_s": steal, "steal_share": steal_share,
            "disturbed": bool(other_share > DISTURBED_OTHER_SHARE
                              or steal_share > DISTURBED_STEAL_SHARE)}
