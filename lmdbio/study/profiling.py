"""Where the CPU seconds of a run go: every process of the machine, and inside the Python ones.

Two instruments, used together around one run (``Profiler``):

* **Per process**, from ``/proc``: the CPU seconds (user + system) each process used during the
  run, grouped by what it is: this process (the DataLoader's main process, with lmdbio's
  prefetch threads), its DataLoader workers (reaped children, ``getrusage``), the network file
  system's processes (``sshfs``, ``sftp-server``, ``sshd``, the delay relay), kernel threads
  (reclaim, writeback, I/O completion), the profiler itself, and everything else; ``idle`` is
  what the cores did not use. Exact, whatever the process is written in.
* **Inside the Python processes**, from py-spy (a sampling profiler that reads the stacks of
  the main process and its workers from outside, ``--subprocesses``; no code is injected): the
  share of on-CPU samples in each stage of loading (:data:`CATEGORIES`: reading records,
  decoding, the transform, collating and handing batches over, lmdbio's prefetch...).

py-spy is optional (``pip install py-spy``, the ``profile`` extra); without it only the
per-process part is measured. It needs ptrace rights over this process (root, or
``kernel.yama.ptrace_scope`` 0).
"""

from __future__ import annotations

import collections
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["CATEGORIES", "Profiler", "ProcessCpu", "categorize", "cpu_snapshot", "cpu_by_group",
           "machine_cpu_s", "pyspy", "read_collapsed"]

_TICK = os.sysconf("SC_CLK_TCK")
# Processes by name: the network file system's, as the study brings it up (lmdbio.study.netfs,
# latency_fs) or a user's mount has them.
_NETFS = {"sshfs": "sshfs", "sftp-server": "sftp-server", "sshd": "sshd", "ssh": "ssh"}
_RELAY = ("lmdbio/study/relay.py", "lmdbio.study.relay")  # the delay relay's command line

#: (category, substrings of a frame), in priority order: a sample belongs to the first category
#: with a matching frame anywhere in its stack (the transform calls Pillow, so it must win over
#: decode; the checksum runs inside a record read, so it must win over reading).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("prefetch", ("lmdbio/prefetch.py",)),
    ("transform", ("torchvision/transforms",)),
    # ImageFolder's loader reads its file inside Pillow's decode: counted here
    ("decode", ("PIL/", "lmdbio/decode.py", "pil_loader (")),
    ("read: checksum", ("decode_record (lmdbio/format.py",)),
    ("read: record", ("lmdbio/database.py", "lmdbio/direct.py", "lmdbio/locality.py",
                      "lmdbio/shard_set.py", "lmdbio/envs.py", "lmdbio/dataset.py")),
    ("read: peer", ("litdata/", "webdataset/", "tarfile.py")),
    ("read: file", ("torchvision/datasets/folder.py",)),
    ("collate + hand-over", ("torch/utils/data/_utils/collate.py",
                             "torch/multiprocessing/reductions.py", "multiprocessing/queues.py",
                             "multiprocessing/reduction.py", "multiprocessing/connection.py",
                             "torch/storage.py")),
    ("loader loop", ("torch/utils/data/",)),
    ("harness", ("lmdbio/study/",)),
)


def categorize(stack: Iterable[str]) -> str:
    """The category of one sampled stack (its frames, in any order)."""
    frames = list(stack)
    for name, marks in CATEGORIES:
        if any(mark in frame for frame in frames for mark in marks):
            return name
    return "other"


@dataclass(frozen=True)
class ProcessCpu:
    pid: int
    ppid: int
    comm: str
    cmdline: str
    cpu_s: float
    started: int  # clock ticks after boot: a pid reused by a new process differs here


def _read_process(pid: int) -> ProcessCpu | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None  # gone meanwhile
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return ProcessCpu(pid, int(fields[1]), comm, cmdline,
                      (int(fields[11]) + int(fields[12])) / _TICK, int(fields[19]))


def cpu_snapshot() -> dict[int, ProcessCpu]:
    """Every process's CPU seconds so far."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            process = _read_process(int(name))
            if process is not None:
                found[process.pid] = process
    return found


def machine_cpu_s() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot (iowait counts as idle)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:8]]
    user, nice, system, idle, iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / _TICK, (idle + iowait) / _TICK


def _children_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _group(process: ProcessCpu, own: int, profiler: int | None) -> str:
    if process.pid == own:
        return "main process"
    if process.pid == profiler:
        return "profiler"
    # the network FS's processes and the relay may be this process's children too: by name
    if process.comm in _NETFS:
        return _NETFS[process.comm]
    if any(mark in process.cmdline for mark in _RELAY):
        return "relay"
    if process.ppid == own:
        return "workers"  # DataLoader workers still alive at the end
    if process.ppid == 2 or process.pid == 2:
        return "kernel threads"
    return "other processes"


def cpu_by_group(before: dict[int, ProcessCpu], after: dict[int, ProcessCpu],
                 reaped_s: float, profiler: int | None = None) -> dict[str, float]:
    """CPU seconds per group between two snapshots; ``reaped_s``: this process's children
    that exited in between (the DataLoader workers of the run)."""
    own = os.getpid()
    groups: dict[str, float] = collections.defaultdict(float)
    groups["workers"] += reaped_s
    for pid, process in after.items():
        start = before.get(pid)
        # (a kernel worker renames itself with its work: compare start times, not names)
        same = start is not None and start.started == process.started
        used = process.cpu_s - (start.cpu_s if same else 0.0)
        if used > 0:
            groups[_group(process, own, profiler)] += used
    return dict(groups)


def _column(name: str) -> str:
    """A group or category as a column-name part: ``"read: record"`` -> ``read_record``."""
    return "_".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def pyspy() -> str | None:
    """The py-spy executable: beside this interpreter (a virtual environment's bin/, which
    need not be on PATH), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return beside if os.access(beside, os.X_OK) else shutil.which("py-spy")


def read_collapsed(path: str) -> list[tuple[str, list[str], int]]:
    """py-spy's raw (collapsed) output: ``(process, frames outermost first, samples)``."""
    rows = []
    with open(path, errors="replace") as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            # a child's stacks are nested under its parent's: "process A;process B;frames"
            nested = 0
            while nested < len(frames) and frames[nested].startswith("process "):
                nested += 1
            process = frames[nested - 1] if nested else ""
            rows.append((process, frames[nested:], int(count)))
    return rows


@dataclass
class Profiler:
    """Measures one run: ``with Profiler() as p: run()``, then ``p.cpu`` (seconds per group,
    ``idle`` included) and ``p.stages`` (``{"main process"|"workers": {category: seconds}}``,
    when py-spy ran)."""

    rate: int = 50                    # py-spy samples per second and thread
    use_pyspy: bool = True
    cpu: dict[str, float] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    wall_s: float = 0.0
    _spy: subprocess.Popen | None = None
    _out: str = ""

    def __enter__(self) -> Profiler:
        executable = pyspy() if self.use_pyspy else None
        if executable:
            handle, self._out = tempfile.mkstemp(prefix="lmdbio-pyspy-", suffix=".txt")
            os.close(handle)
            self._spy = subprocess.Popen(
                [executable, "record", "--pid", str(os.getpid()), "--subprocesses", "--rate",
                 str(self.rate), "--format", "raw", "--nonblocking", "-o", self._out],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._before = cpu_snapshot()
        self._machine = machine_cpu_s()
        self._children = _children_s()
        import time

        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        import time

        self.wall_s = time.perf_counter() - self._started
        self.cpu["wall"] = self.wall_s  # the window the groups' seconds were counted in
        busy, idle = machine_cpu_s()
        after = cpu_snapshot()
        spy = self._spy
        self.cpu |= cpu_by_group(self._before, after, _children_s() - self._children,
                                 spy.pid if spy else None)
        total_busy = busy - self._machine[0]
        counted = sum(v for k, v in self.cpu.items() if k != "wall")
        self.cpu["unaccounted"] = max(0.0, total_busy - counted)
        self.cpu["idle"] = idle - self._machine[1]
        if spy is None:
            return
        try:
            spy.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
        try:
            if exc[0] is None and os.path.getsize(self._out):
                self.stages = self._stages(read_collapsed(self._out))
        finally:
            os.unlink(self._out)

    def columns(self) -> dict[str, float]:
        """A run row's columns: ``cpu_<group>_s`` for every group (``cpu_idle_s`` included) and,
        when py-spy ran, ``stage_<role>_<category>_s`` (role ``main``/``workers``)."""
        row = {f"cpu_{_column(group)}_s": seconds for group, seconds in self.cpu.items()}
        for role, stages in self.stages.items():
            short = "main" if role == "main process" else role
            row |= {f"stage_{short}_{_column(name)}_s": v for name, v in stages.items()}
        return row

    def _stages(self, rows: list[tuple[str, list[str], int]]) -> dict[str, dict[str, float]]:
        main = f"process {os.getpid()}:"
        stages: dict[str, dict[str, float]] = {}
        for process, frames, count in rows:
            if any(mark in process for mark in _RELAY):
                continue  # the relay is a Python child too: its CPU is its own group's
            role = "main process" if process.startswith(main) or not process else "workers"
            category = categorize(frames)
            stages.setdefault(role, collections.defaultdict(float))[category] += count / self.rate
        return {role: dict(values) for role, values in stages.items()}
