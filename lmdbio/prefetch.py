"""Sequential prefetch of database files into the page cache, for cold random-order epochs.

Why: a cold epoch in random order over a file that fits in RAM costs one small random read
per record, which storage (a network file system most of all) serves at a fraction of its
sequential bandwidth. Reading the file front to back in large chunks runs at that bandwidth,
and every record behind the read cursor is then a page-cache hit. So a reader that opens a
database which fits comfortably in memory starts one background thread per file that reads it
through once; records are still served in whatever order the sampler asks for.

The thread moves each chunk from the file to ``/dev/null`` with ``sendfile``
(``lmdbio.fetch``): the kernel reads it into the page cache and hands it on without copying it
into this process, which took 21-27 ms of CPU for the sweep's 66 MB database on the SFTP mount
against 31-62 ms for ``preadv`` into a buffer (file systems that cannot splice get ``preadv``
into one reusable buffer). The GIL is released during each call, so DataLoader work in the same
process is not slowed; the thread stops early when asked and never holds the data. Files larger
than the memory budget are not prefetched: their early pages would be evicted before use (for
those, see ``lmdbio.samplers``).

On a network file system one sequential stream is bound by its window, not by the network:
the kernel keeps about one readahead window (128 KiB through FUSE) in flight per stream, so a
stream reads ~window / round trip (54 MB/s at 2.3 ms through sshfs, README). There the file is
read as ``NETWORK_STREAMS`` streams at once, each thread front to back through its own region
of the file; on a local disk one stream (several would only break up its sequential reads).

The memory budget honours cgroup limits (v1 and v2), so a container or a job step with a
memory limit below the machine's RAM is judged by its own limit.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from .fetch import Sink
from .forklock import ForkSafeLock
from .system import on_network_fs, proc_kib_field

__all__ = ["NETWORK_STREAMS", "Prefetcher", "fits_in_memory", "memory_budget", "prefetch_files",
           "stop_all", "streams_for"]

CHUNK_BYTES = 8 << 20   # large enough that each read is one sequential stream, small enough to stop fast
NETWORK_STREAMS = 4     # concurrent streams on a network or FUSE file system (one locally)
FRACTION_OF_BUDGET = 0.5  # leave room for the process, its workers and everything else cached
_UNLIMITED = 1 << 60     # cgroup v1 reports "no limit" as a huge number


def _meminfo_available() -> int:
    available = proc_kib_field("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text in ("", "max") else int(text)


def _stat_value(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def _cgroup_room() -> int | None:
    """Bytes the memory cgroup of this process can still hold in page cache, if it is limited.

    Page cache counts against a cgroup's limit, and the kernel reclaims within the cgroup: a
    prefetch larger than the limit evicts its own first pages. Anonymous memory already in use
    is subtracted; cached pages are not (they are what a prefetch would replace).
    """
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, relative = line.split(":", 2)
        if "memory" in controllers.split(","):  # v1: memory.stat has the hierarchical limit
            folder = Path("/sys/fs/cgroup/memory") / relative.lstrip("/")
            limit = _stat_value(folder / "memory.stat", "hierarchical_memory_limit")
            used = _stat_value(folder / "memory.stat", "total_rss") or 0
            if limit is not None and limit < _UNLIMITED:
                rooms.append(limit - used)
        elif controllers == "":  # v2: walk up, every ancestor's memory.max applies
            folder = Path("/sys/fs/cgroup") / relative.lstrip("/")
            for level in (folder, *folder.parents):
                if not str(level).startswith("/sys/fs/cgroup"):
                    break
                limit = _read_int(level / "memory.max")
                if limit is not None:
                    rooms.append(limit - (_stat_value(level / "memory.stat", "anon") or 0))
    return min(rooms) if rooms else None


def memory_budget() -> int:
    """Bytes of page cache this process can count on: ``MemAvailable``, capped by its cgroup."""
    available = _meminfo_available()
    room = _cgroup_room()
    return max(0, min(available, room) if room is not None else available)


def fits_in_memory(paths: Iterable[str], fraction: float = FRACTION_OF_BUDGET) -> bool:
    """True when the files together take at most ``fraction`` of ``memory_budget()``."""
    total = sum(os.path.getsize(p) for p in paths)
    return total <= fraction * memory_budget()


def streams_for(path: str) -> int:
    """How many streams read ``path``: ``NETWORK_STREAMS`` on a network or FUSE file system,
    else 1."""
    return NETWORK_STREAMS if on_network_fs(path) else 1


class Prefetcher:
    """Background threads reading one file once: ``streams`` of them, each front to back
    through its own contiguous part of the file."""

    def __init__(self, path: str, chunk_bytes: int = CHUNK_BYTES, streams: int = 1) -> None:
        self.path = path
        self.chunk_bytes = chunk_bytes
        self.error: OSError | None = None
        self.users = 0
        self._stop = threading.Event()
        self._read = [0] * max(1, streams)  # bytes read by each stream
        self._threads = [threading.Thread(target=self._run, args=(stream,), daemon=True,
                                          name=f"lmdbio-prefetch-{stream}:{path}")
                         for stream in range(len(self._read))]

    @property
    def streams(self) -> int:
        return len(self._threads)

    @property
    def bytes_read(self) -> int:
        return sum(self._read)

    def start(self) -> Prefetcher:
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, stream: int) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:  # the reader reports a missing file itself, in its own words
            self.error = exc
            return
        sink = None
        try:
            sink = Sink(fd, self.chunk_bytes)
            size = os.fstat(fd).st_size
            part = -(-size // self.streams)
            offset, end = stream * part, min(size, (stream + 1) * part)
            # a larger readahead window for this descriptor: each read becomes fewer requests
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while offset < end and not self._stop.is_set():
                got = sink.read(offset, min(self.chunk_bytes, end - offset))
                if got <= 0:
                    break
                offset += got
                self._read[stream] += got
        except OSError as exc:  # e.g. a network FS going away: reads will say so themselves
            self.error = exc
        finally:
            if sink is not None:
                sink.close()
            os.close(fd)

    @property
    def done(self) -> bool:
        return all(t.ident is not None and not t.is_alive() for t in self._threads)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the whole file has been read (or ``timeout``); True when finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        """Stop after the current chunks and wait for the threads (before evicting the file)."""
        self._stop.set()
        for thread in self._threads:
            if thread.ident is not None:
                thread.join()


_lock = ForkSafeLock()
_active: dict[tuple[int, int, int], Prefetcher] = {}


def prefetch_files(paths: Iterable[str]) -> list[Prefetcher]:
    """Start (or join) one prefetch per file in this process; a file being read is not read
    twice by two datasets over it."""
    started = []
    with _lock:
        for path in paths:
            stat = os.stat(path)
            key = (os.getpid(), stat.st_dev, stat.st_ino)
            current = _active.get(key)
            if current is None or (current.done and current.error is not None):
                current = _active[key] = Prefetcher(path, streams=streams_for(path)).start()
            current.users += 1
            started.append(current)
    return started


def stop_all(prefetchers: Iterable[Prefetcher]) -> None:
    """Release these prefetches; each stops with its last user and is forgotten (a later open
    may prefetch again, e.g. after the file was evicted)."""
    with _lock:
        for prefetcher in prefetchers:
            prefetcher.users -= 1
            if prefetcher.users > 0:
                continue
            prefetcher.stop()
            for key, value in list(_active.items()):
                if value is prefetcher:
                    del _active[key]
