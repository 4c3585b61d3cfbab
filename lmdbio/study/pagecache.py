"""Page-cache control for cold/warm benchmark runs.

A "cold" read benchmark is only cold if the data file's pages are not already
in the kernel page cache; a "warm" one is only warm if they are.  Dropping the
whole system cache (``echo 3 > /proc/sys/vm/drop_caches``) needs root, hits
every other process and is not possible inside many containers, so instead we
drop exactly the pages of the files under test with
``posix_fadvise(POSIX_FADV_DONTNEED)`` and *measure* what is left with
``mincore(2)``, so every benchmark result can record how cold it really was.

Stdlib only; the mincore() itself is the library's (``lmdbio.residency``).
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

from lmdbio.residency import resident_bytes

__all__ = ["Residency", "ResidencyError", "evict", "evict_and_check", "read_through",
           "residency"]

PathLike = Union[str, "os.PathLike[str]"]

# Errors meaning "this file cannot be opened for writing": not fatal for evict,
# the file simply cannot hold dirty pages written through this mount by us.
_NO_WRITE_ERRNOS = {errno.EACCES, errno.EROFS, errno.EPERM, errno.ETXTBSY}


@dataclass(frozen=True)
class Residency:
    """How much of a file (or of all regular files in a tree) is in the page cache."""

    files: int
    bytes_total: int
    bytes_resident: int

    @property
    def fraction(self) -> float:
        """Resident share of the bytes, 0.0 for empty input."""
        return self.bytes_resident / self.bytes_total if self.bytes_total else 0.0


class ResidencyError(OSError):
    """A file's residency could not be measured (unreadable, unmappable, ...)."""


def _regular_files(path: PathLike) -> Iterator[Path]:
    """Yield ``path`` if it is a regular file, else every regular file below it.

    The top-level path is resolved (the caller named it), but symlinks inside
    the tree are skipped so we never wander outside it or count a file twice.
    """
    root = Path(path).resolve(strict=True)
    if root.is_file():
        yield root
        return
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(filenames):
            candidate = Path(dirpath, name)
            if stat.S_ISREG(candidate.lstat().st_mode):
                yield candidate


def _sync_if_writable(file: Path) -> None:
    """fsync ``file`` so DONTNEED can drop its pages (dirty pages are kept)."""
    try:
        fd = os.open(file, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in _NO_WRITE_ERRNOS:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def evict(path: PathLike) -> None:
    """Drop the clean page-cache pages of a file, or of every regular file in a tree.

    Each file is first fsync'ed through an ``O_RDWR`` descriptor when that is
    permitted (EACCES/EROFS/EPERM are ignored), because DONTNEED silently keeps
    dirty pages.  Then ``posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`` is
    issued on a read-only descriptor.

    Caveat: the kernel only drops pages that no process has mapped.  Callers
    must close every LMDB environment / ``mmap`` of the file first (in *all*
    processes, including DataLoader workers), otherwise the mapped pages stay
    resident and the "cold" run is warm.  Use :func:`evict_and_check` to see.

    Works on FUSE mounts (e.g. sshfs) too: it drops the FUSE client's cache.
    """
    for file in _regular_files(path):
        _sync_if_writable(file)
        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_through(path: PathLike, chunk: int = 8 << 20) -> int:
    """Read a file, or every regular file in a tree, once from start to end in ``chunk``-sized
    reads, so its pages are in the page cache (a "warm" run; the same files :func:`evict`
    drops); returns the bytes read (timed around a cold file: its sequential bandwidth)."""
    buffer = bytearray(chunk)
    total = 0
    for file in _regular_files(path):
        with open(file, "rb", buffering=0) as handle:
            while got := handle.readinto(buffer):
                total += got
    return total


def _resident_bytes(file: Path) -> tuple[int, int]:
    """Return ``(size, resident_bytes)`` of one regular file (``lmdbio.residency``)."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ResidencyError(exc.errno, "cannot measure page-cache residency "
                             f"(open: {exc.strerror})", str(file)) from exc
    try:
        size = os.fstat(fd).st_size
        try:
            return size, resident_bytes(fd, size)
        except OSError as exc:
            raise ResidencyError(exc.errno, f"cannot measure page-cache residency "
                                 f"({exc.strerror}: {os.strerror(exc.errno or 0)})",
                                 str(file)) from None
    finally:
        os.close(fd)


def residency(path: PathLike) -> Residency:
    """Measure how much of a file, or of all regular files in a tree, is cached.

    Raises :class:`ResidencyError` (an ``OSError``) naming the file when one
    cannot be opened or mapped.  Empty files count as files with zero bytes.
    """
    files = total = resident = 0
    for file in _regular_files(path):
        size, cached = _resident_bytes(file)
        files += 1
        total += size
        resident += cached
    return Residency(files=files, bytes_total=total, bytes_resident=resident)


def evict_and_check(path: PathLike, max_fraction: float = 0.05) -> Residency:
    """Evict ``path`` and return the residency measured right afterwards.

    Never raises for an incomplete eviction: the caller records the returned
    :class:`Residency` with the benchmark result.  If more than
    ``max_fraction`` is still resident a ``RuntimeWarning`` is emitted; the
    usual cause is an LMDB env / mmap of the file still open somewhere.
    """
    evict(path)
    measured = residency(path)
    if measured.fraction > max_fraction:
        warnings.warn(
            f"{path}: {measured.fraction:.1%} still in page cache after evict "
            f"(limit {max_fraction:.1%}); is an LMDB env or mmap still open?",
            RuntimeWarning, stacklevel=2)
    return measured
