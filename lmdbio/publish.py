"""Publish by rename: an output appears under its final name complete, or not at all.

Everything lmdbio and its study write (databases, peer datasets, tables, notebooks) is written
under a temporary name beside the final one and renamed into place when complete, so a kill, a
full disk or an exception never leaves a half-written file under the name a reader opens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["PARTIAL_SUFFIX", "create_exclusive", "discard", "fsync_directory", "publish",
           "remove_file", "same_file", "staged"]

# Creating a file that must be new: fails on anything already there, a planted symlink
# (dangling or not) included, and never follows one (O_NOFOLLOW for good measure).
_EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

PARTIAL_SUFFIX = ".partial"


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make a rename inside directory ``path`` survive a power cut."""
    directory = os.open(os.fspath(path) or ".", os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove_file(path: str | os.PathLike[str]) -> None:
    """Unlink ``path`` (a symlink: the link itself, never its target); nothing if it does not
    exist. A folder is never removed (``IsADirectoryError``): for callers that refuse one."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def discard(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` whatever it is (file, folder, symlink: the link itself, never its
    target); nothing if it does not exist."""
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        remove_file(path)


def create_exclusive(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> IO[Any]:
    """Open a new file for writing (``open()``'s ``mode``: "wb", "w"...), refusing with
    ``FileExistsError`` whatever sits at ``path`` (a symlink planted by whoever can write the
    folder is never followed). How to create the file ``staged`` yields."""
    fd = os.open(os.fspath(path), _EXCLUSIVE, 0o644)
    return os.fdopen(fd, mode, **kwargs)


def same_file(path: str | os.PathLike[str], fd: int) -> bool:
    """Whether ``path`` names, itself and not through a symlink, the regular file open as
    ``fd``: checked before a file written through ``fd`` is published under ``path``'s
    rename, so a name swapped meanwhile is never published."""
    try:
        named = os.lstat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return stat.S_ISREG(named.st_mode) and (named.st_dev, named.st_ino) == (held.st_dev,
                                                                         held.st_ino)


@contextlib.contextmanager
def staged(final: str | os.PathLike[str], partial: str | os.PathLike[str] | None = None
           ) -> Iterator[str]:
    """Yield a temporary name beside ``final`` to write a file or folder into; when the block
    ends normally it replaces ``final`` (an existing one goes only then), when it raises the
    temporary output is removed. What was at the temporary name before (a killed run's
    leftover, or a planted link) is removed first, never written through.

    The caller creates the temporary file with ``create_exclusive(partial)`` (or
    ``open(partial, "x")``, also O_EXCL), a folder with ``os.mkdir``: both refuse a link
    planted between that removal and the creation, where ``open(partial, "w")`` would follow
    it and overwrite its target."""
    final = os.fspath(final)
    partial = os.fspath(partial) if partial is not None else final + PARTIAL_SUFFIX
    discard(partial)
    try:
        yield partial
    except BaseException:
        discard(partial)
        raise
    if os.path.isdir(partial) and os.path.isdir(final) and not os.path.islink(final):
        shutil.rmtree(final)  # os.replace cannot replace a non-empty folder
    os.replace(partial, final)
    fsync_directory(os.path.dirname(os.path.abspath(final)))


def publish(partial: str, final: str, *, overwrite: bool) -> bool:
    """Rename the finished ``partial`` file to ``final``. Without ``overwrite`` a ``final``
    that appeared meanwhile is never clobbered: False is returned and ``partial`` is kept."""
    if overwrite:
        os.replace(partial, final)
    else:
        try:
            os.link(partial, final)  # fails if final appeared meanwhile
            os.unlink(partial)
        except FileExistsError:
            return False
        except OSError:
            os.rename(partial, final)  # file systems without hard links
    fsync_directory(os.path.dirname(os.path.abspath(final)))
    return True
