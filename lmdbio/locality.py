"""Where records lie in the file, so a block of them can be requested from storage in one go.

For a database larger than the page cache, read in shuffled blocks of neighbouring records
(``samplers.BlockShuffleSampler``), the kernel's own readahead does badly: LMDB maps the file,
and a fault in a mapping reads a window *around* the faulting page (``read_ahead_kb``, 8 MiB on
this machine's virtio disk), half of it behind the record, evicted before use when several
blocks are read at once. Measured in a memory cgroup at 1/4 of the DB: 27 MB/s with readahead,
53 MB/s without (one 4 KiB fault at a time), 1 042 MB/s reading the file in order.

What works: readahead off, and when the sampler takes a block into its shuffle buffer it asks
for exactly that block's bytes with ``posix_fadvise(WILLNEED)`` (one large asynchronous read);
the records of the block are page-cache hits by the time they are drawn. The byte range comes
from LMDB itself: ``txn.get(..., buffers=True)`` returns a view into the map without touching
the record's pages, and the view's address minus the map's base address (from
``/proc/self/maps``) is the record's offset in the file. Records of one conversion are appended
in key order, so a block of indices is one contiguous range.

The request is sent from a background thread of the process (``in_background``): finding the
range may read a cold leaf page, and ``posix_fadvise`` returns only once the read is queued,
which in a memory cgroup at its limit includes reclaiming room for it (2-3 ms per 4 MB
block). A single reader in a cgroup at 1/4 of a 1.18 GB database read 451 MB/s with the hints
sent inline, 544 MB/s with them sent from the thread (medians of 4 ABBA pairs, each pair
faster; README, "Performance targets").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from .forklock import ForkSafeLock

__all__ = ["buffer_address", "in_background", "map_base", "settle", "will_need"]

_HINT_THREAD = "lmdbio-hint"
_hints: tuple[int, Any] | None = None  # (pid, SimpleQueue) of this process's hint thread
_hints_lock = ForkSafeLock()


def buffer_address(view: memoryview) -> int:
    """Address of the first byte of a (read-only) buffer, without reading it."""
    import numpy  # the buffer protocol's pointer, portably; a view costs no copy

    return int(numpy.frombuffer(view, numpy.uint8).ctypes.data) if len(view) else 0


def map_base(path: str, map_size: int) -> int | None:
    """Start address of this process's mapping of ``path`` from offset 0 spanning
    ``map_size`` bytes (LMDB's map), or None when there is none."""
    stat = os.stat(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 5 or int(fields[4]) != stat.st_ino or int(fields[2], 16) != 0:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            device = tuple(int(x, 16) for x in fields[3].split(":"))
            if end - start == map_size and device == (os.major(stat.st_dev),
                                                      os.minor(stat.st_dev)):
                return start
    return None


def in_background(hint: Callable[..., object], *args: object) -> None:
    """Run ``hint(*args)`` in this process's hint thread (one, so hints keep their order), and
    return at once. Why: finding a block's bytes may read a cold leaf page of the B-tree,
    and ``posix_fadvise`` blocks until the read is queued, which where memory is tight (a
    cgroup at its limit) includes reclaiming room for it; the caller, a sampler in the
    training loop's process, goes on meanwhile. A hint: what it raises is dropped, and the
    read that follows reports the problem in its own words; where no thread can be started
    the hint is dropped too."""
    try:
        hints = _hint_queue()
    except RuntimeError:  # no thread could be started (a process limit), or exiting
        return
    hints.put((hint, args))  # SimpleQueue.put is reentrant: safe even from a finalizer


def settle() -> None:
    """Return once every hint this process asked for has run (before a file's pages are
    evicted, so no late hint reads them back in)."""
    made = _hints
    if (made is None or made[0] != os.getpid()
            or threading.current_thread().name == _HINT_THREAD):
        return  # no hint was asked for here; or a hint itself asks, and would wait for itself
    done = threading.Event()
    made[1].put((done.set, ()))
    done.wait()


def _hint_queue() -> Any:
    """This process's queue of hints, its thread started first (a forked child, where the
    parent's thread does not exist, starts its own)."""
    global _hints
    with _hints_lock:
        if _hints is None or _hints[0] != os.getpid():
            import queue

            hints: Any = queue.SimpleQueue()
            # a daemon: hints still queued when the interpreter exits are dropped, not waited for
            threading.Thread(target=_serve, args=(hints,), name=_HINT_THREAD, daemon=True).start()
            _hints = (os.getpid(), hints)
        return _hints[1]


def _serve(hints: Any) -> None:
    while True:
        hint, args = hints.get()
        try:
            hint(*args)
        except Exception:  # noqa: BLE001 - a hint; see in_background
            pass


def will_need(path: str, offset: int, length: int) -> None:
    """Ask the kernel to read ``length`` bytes at ``offset`` now, asynchronously."""
    if length <= 0:
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)
