"""The lock on ``DST.partial``: one conversion writes one file, never through a planted link."""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from .errors import ConcurrentWriteError, DestinationError
from .publish import remove_file, same_file

__all__ = ["lock_partial"]


def lock_partial(partial: str, keep: bool) -> int:
    """An exclusive lock on ``DST.partial`` so two conversions never write one file.

    Whoever can write the destination folder can plant anything at ``DST.partial``: a symlink
    to a victim file, a hard link to one, a FIFO, a device node, a file they own and keep
    open. Only a regular file this user owns, with one link, opened without following a
    symlink, is written (and resumed); anything else but a folder is unlinked (the link
    itself, never its target) and a new file is created with ``O_EXCL``. The returned fd is
    the inode LMDB then writes (``LmdbWriter(fd=...)``). Unless ``keep`` (resuming), a stale
    partial file is emptied; LMDB starts afresh on an empty file.
    """
    for _ in range(8):  # each retry follows an unlink: only a racing planter loops
        try:
            found = os.lstat(partial)
        except FileNotFoundError:
            found = None
        except OSError as exc:
            raise _refused(partial, exc, "cannot inspect", "check that the folder is readable"
                           ) from None
        if found is not None and stat.S_ISDIR(found.st_mode):
            raise DestinationError(f"{partial!r} is a folder; remove it (lmdbio writes its "
                                   "partial output under that name), then convert again")
        if found is not None and not _writable_partial(found):
            # A run killed between publish's link() and unlink() leaves DST.partial as a
            # second name of the complete DST (tests/torture/test_reliability_kill.py); a
            # planted link, FIFO or foreign file: never write through any of them.
            _unlink_quietly(partial)
            continue
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(partial, flags | (os.O_CREAT | os.O_EXCL if found is None else 0),
                         0o644)
        except FileNotFoundError as exc:
            if found is None:  # O_CREAT: no folder to create it in (or /proc, /sys...)
                raise _refused(partial, exc, "cannot create",
                               "check that the folder exists on a writable file system"
                               ) from None
            continue  # removed since the lstat: look again
        except (FileExistsError, IsADirectoryError):
            continue  # changed since the lstat: look again
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink swapped in since the lstat
                _unlink_quietly(partial)
                continue
            raise _refused(partial, exc, "cannot create", "check that the folder is writable"
                           ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConcurrentWriteError(f"another conversion is writing {partial!r}; wait for "
                                       "it or stop it") from None
        held = os.fstat(fd)
        if not _writable_partial(held) or not same_file(partial, fd):
            os.close(fd)  # swapped or linked since the open: start again from the lstat
            continue
        if not keep:
            os.ftruncate(fd, 0)
        return fd
    raise DestinationError(f"{partial!r} keeps being replaced while lmdbio opens it; "
                           "someone else writes the destination folder: use a private one")


def _refused(partial: str, exc: OSError, what: str, remedy: str) -> DestinationError:
    if exc.errno == errno.ENAMETOOLONG:
        remedy = "choose a shorter destination name (lmdbio writes it as NAME.partial first)"
    return DestinationError(f"{what} {partial!r} ({exc.strerror}); {remedy}")


def _writable_partial(found: os.stat_result) -> bool:
    return (stat.S_ISREG(found.st_mode) and found.st_nlink == 1
            and found.st_uid == os.geteuid())


def _unlink_quietly(path: str) -> None:
    # remove_file, not publish.discard: a folder swapped in since the lstat is refused
    # (IsADirectoryError, a DestinationError here), never emptied
    try:
        remove_file(path)
    except OSError as exc:
        raise DestinationError(f"cannot remove {path!r} ({exc.strerror}), which lmdbio will "
                               "not write through; remove it by hand") from None
