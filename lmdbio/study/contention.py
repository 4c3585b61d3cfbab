"""What else used the machine while a run was measured: the load average, the CPU time of
every other process, and the time the hypervisor stole. A run on a busy machine is flagged
``disturbed`` so that the report can say how much to trust a comparison.

CPU time comes from ``/proc/stat`` (the whole machine: user, nice, system and steal ticks;
irq and softirq time is left out: no process is charged with it, and here it is mostly the
run's own I/O, the loopback traffic of the sshfs stand-in and of a distributed run's gloo)
minus the study's own: every live process of its tree, each with the CPU time of
the children it has reaped (``/proc/<pid>/stat`` utime, stime, cutime, cstime), so CPU stays
"own" when a worker or a grandchild exits. The tree is this process's, or that of the process
named in ``OWN_TREE_ENV`` when it is an ancestor: the study runner names itself there, so its
notebook kernels, a distributed run's other ranks and the network file system's stand-in
(sshd, sftp-server, sshfs) are the study's own work, not a disturbance. Linux only; elsewhere
the figures are NaN and no run is flagged.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

__all__ = ["DISTURBED_OTHER_SHARE", "DISTURBED_STEAL_SHARE", "OWN_TREE_ENV", "Sample",
           "contention", "sample"]

DISTURBED_OTHER_SHARE = 0.10   # other processes used > 10 % of the machine's CPU time
DISTURBED_STEAL_SHARE = 0.05   # or the hypervisor stole > 5 % of it
OWN_TREE_ENV = "LMDBIO_OWN_TREE"  # the pid whose process tree is the study's own
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Sample:
    wall: float
    busy_s: float    # the whole machine's non-idle CPU seconds since boot
    steal_s: float
    own_s: float     # the study's process tree's CPU seconds


def _machine() -> tuple[float, float]:
    with open("/proc/stat") as handle:
        fields = handle.readline().split()[1:]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + steal) / _TICK, steal / _TICK


def _stat(pid: int) -> list[str]:
    """Fields of ``/proc/<pid>/stat`` after the command name (state is [0], ppid [1])."""
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


def _root() -> int:
    """The pid named in ``OWN_TREE_ENV`` if it is this process or an ancestor, else this
    process (a stale or foreign value must not make someone else's tree "own")."""
    try:
        named = int(os.environ.get(OWN_TREE_ENV, ""))
    except ValueError:
        return os.getpid()
    pid = os.getpid()
    while pid > 1:
        if pid == named:
            return named
        try:
            pid = int(_stat(pid)[1])
        except (OSError, IndexError, ValueError):
            break
    return os.getpid()


def _descendants(pid: int) -> list[int]:
    """``pid`` and its live descendants; a thread or process that ends meanwhile is skipped
    on its own (it took its parent out of the tree once, and with it ~120 s of "own" CPU)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # gone: what it used is in its parent's reaped children's time
        found.append(parent)
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as handle:
                    todo += [int(c) for c in handle.read().split()]
            except (OSError, ValueError):
                continue
    return found


def _cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and of the children it has reaped."""
    try:
        fields = _stat(pid)
        return sum(int(fields[i]) for i in (11, 12, 13, 14)) / _TICK  # utime .. cstime
    except (OSError, IndexError, ValueError):
        return 0.0


def sample() -> Sample:
    """The counters now."""
    try:
        busy, steal = _machine()
    except (OSError, ValueError):
        return Sample(time.perf_counter(), math.nan, math.nan, math.nan)
    own = sum(_cpu_s(pid) for pid in _descendants(_root()))
    return Sample(time.perf_counter(), busy, steal, own)


def contention(before: Sample, after: Sample) -> dict[str, float | bool]:
    """Columns of a run row: load average at its end, other processes' CPU seconds and their
    share of the machine, stolen seconds, and whether the run counts as disturbed."""
    wall = max(after.wall - before.wall, 1e-9)
    capacity = wall * (os.cpu_count() or 1)
    # within what the machine could do: a tree member that left it (daemonized) between the
    # samples makes "own" smaller than it was, and must not make "other" larger than possible
    other = min(capacity, max(0.0, (after.busy_s - before.busy_s) - (after.own_s - before.own_s)))
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
