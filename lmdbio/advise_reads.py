"""The storage side of ``lmdbio advise``'s probe (``lmdbio.advise_probe``): files opened,
their pages dropped and read back cold, each part timed; one sequential stream; random reads of
a large file; sizes by ``stat``; all in threads that an interrupt stops cleanly.

Nothing is written: files are opened read-only, and the only state changed is the page cache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .advise_model import PAGE_BYTES
from .errors import SourceFileError
from .residency import resident_bytes

__all__ = ["Eviction", "Timed", "evict_one", "random_reads", "read_stream", "stat_rest",
           "threaded_reads", "timed_read"]

READ_BYTES = 1 << 20         # the sequential reads' size, as the brief of issue #16 asks
RANDOM_READS = 32
STAT_THREADS = 8             # as lmdbio.sources.list_source's default

_T = TypeVar("_T")
_R = TypeVar("_R")


# -- the page cache -------------------------------------------------------------------------------


class Eviction:
    """Drops each sampled file's pages in the very open() that reads it, and tallies what
    stayed. One open per file: evicting in a pass of its own would open every file first and
    leave its attributes freshly cached on a network FS, so the timed open would not be the
    one ImageFolder pays. Shared by the reading threads (hence the lock)."""

    def __init__(self, evict: bool) -> None:
        self.evict = evict
        self.resident = self.checked_bytes = self.unverifiable = self.refused = 0
        self._lock = threading.Lock()

    def drop(self, fd: int, size: int) -> None:
        """Drop ``fd``'s pages and read back how many stayed (mincore). Dirty pages (a tree
        written moments ago) survive DONTNEED, so where some stay they are written back and
        dropped again: fdatasync on a read-only descriptor flushes what others wrote and
        changes neither the bytes nor the times. Only then, since on a network FS it is a
        round trip of its own."""
        if not self.evict:
            return
        dropped = _dontneed(fd)
        resident = _resident(fd, size)
        if dropped and resident:
            with contextlib.suppress(OSError):
                os.fdatasync(fd)
            _dontneed(fd)
            resident = _resident(fd, size)
        with self._lock:
            self.refused += not dropped
            if resident is None:
                self.unverifiable += 1
            else:
                self.resident += min(resident, size)
                self.checked_bytes += size


def _resident(fd: int, size: int) -> int | None:
    """Resident bytes of ``fd`` (``lmdbio.residency``); None where it cannot be checked."""
    try:
        return resident_bytes(fd, size)
    except (OSError, AttributeError):  # AttributeError: a libc without mincore
        return None


def _dontneed(fd: int) -> bool:
    """POSIX_FADV_DONTNEED on the whole file; False when the file system refuses."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    return True


def _unreadable(path: str, problem: OSError | str) -> SourceFileError:
    """The error for a sampled file that cannot be read; its remedy follows the cause (a link
    to nothing, or a file gone since the listing, has no permissions to fix)."""
    if isinstance(problem, str):  # e.g. a FIFO or a device named like an image
        why, remedy = problem, "replace it with the image or remove it"
    else:
        why = problem.strerror or str(problem)
        remedy = ("restore what it names or remove it" if problem.errno == errno.ENOENT
                  else "fix its permissions or remove it")
    return SourceFileError(f"{path!r}: cannot read: {why}; {remedy} "
                           "(ImageFolder's loader and lmdbio convert stop at it too)", path)


def _open_regular(path: str) -> tuple[int, int]:
    """``(descriptor, size)`` of ``path`` opened read-only, which must be a regular file.
    Opened with O_NONBLOCK, cleared once checked, as lmdbio.sources does: a FIFO named like
    an image would block open() forever, and a device (a link to /dev/zero) never ends."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _unreadable(path, "not a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def evict_one(path: str) -> None:
    """Drop one file's pages again (the large file, between its reads)."""
    fd, _ = _open_regular(path)
    try:
        _dontneed(fd)
    finally:
        os.close(fd)


# -- timed reads ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    path: str
    size: int
    open_s: float
    read_s: float
    close_s: float
    data: bytes | None

    @property
    def total_s(self) -> float:
        return self.open_s + self.read_s + self.close_s


def timed_read(path: str, cache: Eviction | None, keep: int) -> Timed:
    """open + read to EOF + close, each part timed; between open and read (untimed) the
    file is checked to be regular and its pages dropped (``cache``; None: read as cached).
    Its bytes are kept when it is at most ``keep`` bytes, for the decode timings."""
    t0 = time.perf_counter()
    fd, size = _open_regular(path)
    t1 = time.perf_counter()
    open_fd: int | None = fd  # closed in finally unless the timed close ran (Ctrl-C, errors)
    try:
        if cache is not None:
            cache.drop(fd, size)
        chunks = []
        got = 0
        t2 = time.perf_counter()
        while got <= size:  # past the size seen: changed meanwhile, stop
            chunk = os.read(fd, READ_BYTES)
            if not chunk:
                break
            got += len(chunk)
            chunks.append(chunk)
        t3 = time.perf_counter()
        open_fd = None
        os.close(fd)
        t4 = time.perf_counter()
    except OSError as exc:
        raise _unreadable(path, exc) from None
    finally:
        if open_fd is not None:
            os.close(open_fd)
    data = b"".join(chunks) if got <= keep else None
    return Timed(path, got, t1 - t0, t3 - t2, t4 - t3, data)


def read_stream(path: str, deadline: float, limit: int) -> int:
    """Bytes of ``path`` read front to back in READ_BYTES reads, at most ``limit``, stopping
    at ``deadline``: what one sequential stream (lmdbio's prefetch) gets."""
    fd, _ = _open_regular(path)
    try:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # as lmdbio.prefetch does
        got = 0
        while got < limit:
            chunk = os.read(fd, READ_BYTES)
            if not chunk:
                break
            got += len(chunk)
            if time.perf_counter() > deadline:
                break
        return got
    finally:
        os.close(fd)


def threaded_reads(paths: Sequence[str], threads: int, deadline: float, cache: Eviction,
                   keep: int) -> tuple[float, list[Timed]]:
    """``(bytes per second, reads)`` of ``paths`` read cold by ``threads`` threads at once,
    each file front to back in READ_BYTES reads: the converter's reading pattern on this FS.
    Files not started by ``deadline`` are left out. The rate is the reads' bytes over their
    open + read + close times, times the threads reading at once: the wall clock would also
    count starting the threads and dropping each file's pages between its open and its read
    (a freshly written file's fdatasync), which on a small tree is most of it."""
    def one(path: str) -> Timed | None:
        return None if time.perf_counter() > deadline else timed_read(path, cache, keep)

    done = [item for item in _in_threads(one, paths, threads) if item is not None]
    busy = sum(item.total_s for item in done)
    rate = sum(item.size for item in done) / busy * min(threads, len(done)) if busy > 0 else 0.0
    return rate, done


def random_reads(path: str, size: int, request: int, deadline: float,
                  rng: random.Random) -> list[float]:
    """Seconds per cold ``pread`` of ``request`` bytes at random page-aligned offsets of the
    large file ``path``; readahead off (POSIX_FADV_RANDOM), as lmdbio reads a database that
    does not fit in memory."""
    evict_one(path)
    fd, _ = _open_regular(path)
    times: list[float] = []
    try:
        with contextlib.suppress(OSError):  # a hint: without it the figure includes readahead
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        span = max(1, (size - request) // PAGE_BYTES)
        for offset in rng.sample(range(span), min(RANDOM_READS, span)):
            if times and time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            os.pread(fd, request, offset * PAGE_BYTES)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return times


def stat_rest(paths: Sequence[str], deadline: float) -> tuple[dict[str, int], list[float]]:
    """Sizes of ``paths`` by stat in STAT_THREADS threads (runs of 256, as list_source), until
    ``deadline``; and the seconds each stat took."""
    def run(chunk: Sequence[str]) -> list[tuple[str, int, float]]:
        out = []
        for path in chunk:
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            try:
                size = os.stat(path).st_size
            except OSError:
                size = -1  # the read would fail; here it only counts for the size
            out.append((path, size, time.perf_counter() - t0))
        return out

    chunks = [paths[i:i + 256] for i in range(0, len(paths), 256)]
    sizes: dict[str, int] = {}
    times: list[float] = []
    for part in _in_threads(run, chunks, STAT_THREADS):
        for path, size, seconds in part:
            sizes[path] = max(0, size)
            times.append(seconds)
    return sizes, times


def _in_threads(work: Callable[[_T], _R], items: Sequence[_T], threads: int) -> list[_R]:
    """``[work(item) for item in items]``, run by ``threads`` threads; the first exception is
    raised once all have stopped. Every thread started is joined before this returns or
    raises, Ctrl-C included: ThreadPoolExecutor loses a thread when the interrupt lands while
    it starts one (it is recorded only after ``start()`` returns), and that thread outlives
    the call. Here an interrupt stops the handing out of items and waits for the reads in
    flight (one file each)."""
    results: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    positions = iter(range(len(items)))
    lock = threading.Lock()
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            with lock:
                position = next(positions, None)
            if position is None:
                return
            try:
                results[position] = work(items[position])
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(exc)
                stop.set()

    started: list[threading.Thread] = []
    try:
        for number in range(min(threads, len(items))):
            thread = threading.Thread(target=run, name=f"lmdbio-advise-{number}", daemon=True)
            started.append(thread)  # before start(): an interrupt inside start() still joins
            thread.start()
        for thread in started:
            thread.join()
    finally:
        stop.set()
        for thread in started:
            with contextlib.suppress(RuntimeError):  # interrupted before it could start
                thread.join()
    if errors:
        raise errors[0]
    return results
