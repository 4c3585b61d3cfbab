"""Per-process, fork-aware sharing of read-only LMDB environments.

py-lmdb refuses to open one file twice in a process, and an environment inherited through
``fork()`` must not be used by the child (py-lmdb#350, pytorch#9753). So every reader goes
through ``acquire()``: one environment per file per process, reference-counted, reopened
lazily in whichever process reads. Nothing here is pickled; readers drop their handle in
``__getstate__`` and call ``acquire()`` again in the worker.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import lmdb

from .errors import DatabaseNotFoundError, FormatError, OpenOptionsError
from .forklock import ForkSafeLock
from .format import data_file

__all__ = ["EnvOptions", "SharedEnv", "acquire", "check_database_path", "options_for",
           "release"]

_MIN_LMDB_BYTES = 2 * 512  # two meta pages of the smallest page size liblmdb uses


@dataclass(frozen=True)
class EnvOptions:
    """LMDB knobs a reader may set (see README, "Performance", for the measured defaults)."""

    readahead: bool = True
    lock: bool = False          # False: no lock file, works on read-only and shared mounts
    max_readers: int = 126
    max_spare_txns: int = 1


@dataclass
class SharedEnv:
    env: lmdb.Environment
    options: EnvOptions
    pid: int
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file opened
    users: int = 0


_lock = ForkSafeLock()
_envs: dict[tuple[int, int], SharedEnv] = {}
_deferred: list[SharedEnv] = []  # released by a finalizer that could not take the lock


def check_database_path(path: str) -> os.stat_result:
    """The ``stat`` of the file holding ``path``'s pages, refusing before anything opens it
    what is not a regular file: a FIFO (``open()`` would block forever), a device, a socket,
    an empty or too short file (liblmdb's "Bad file descriptor"). A folder is accepted only as
    a directory-style LMDB (``path/data.mdb``). Every opener goes through here (``acquire``,
    ``verify``'s structure walk). Symlinks are followed: a reader may be pointed anywhere."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            inner = os.path.join(path, "data.mdb")
            if not os.path.lexists(inner):
                # e.g. the ImageFolder itself was passed; LMDB would say "No such file..."
                raise FormatError(f"{path!r} is a folder, not a database; to convert an "
                                  "ImageFolder run 'lmdbio convert SRC', then read the .lmdb "
                                  "file it writes")
            where, info = inner, os.stat(inner)
        else:
            where = path
    except FileNotFoundError:
        remedy = ("its conversion stopped before the end: finish it with 'lmdbio convert SRC "
                  "DST --resume'" if os.path.lexists(path + ".partial") else
                  "create it with 'lmdbio convert SRC DST'")
        raise DatabaseNotFoundError(f"database {path!r} does not exist; {remedy}") from None
    except OSError as exc:  # ELOOP, EACCES, ENAMETOOLONG...
        raise FormatError(f"cannot open {path!r} ({exc.strerror}); check the path and its "
                          "permissions") from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a socket"
                if stat.S_ISSOCK(info.st_mode) else "a device"
                if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a file")
        raise FormatError(f"{where!r} is {kind}, not a database file; pass the .lmdb file "
                          "written by 'lmdbio convert'")
    if info.st_size < _MIN_LMDB_BYTES:
        raise FormatError(f"{where!r} is not an LMDB file ({info.st_size} bytes"
                          f"{': empty' if not info.st_size else ''}); convert an ImageFolder "
                          "with 'lmdbio convert SRC'")
    return info


def _identity(path: str) -> tuple[int, int]:
    info = check_database_path(path)
    return info.st_dev, info.st_ino


def _open(path: str, options: EnvOptions) -> lmdb.Environment:
    check_database_path(path)  # again: acquire() checked, but a name can change meanwhile
    if options.lock:
        _check_lock_file(path)
    # With a lock file, a spare read transaction owns a slot of the reader table, which is
    # shared memory: a forked DataLoader worker that closes its inherited copy (as acquire()
    # does) would abort that transaction and free the parent's slot, which a sibling then
    # takes (MDB_BAD_RSLOT; tests/torture/test_reliability_concurrency.py). So no spares with a lock.
    spare = 0 if options.lock else options.max_spare_txns
    try:
        env = lmdb.open(path, subdir=os.path.isdir(path), readonly=True, create=False,
                        lock=options.lock, readahead=options.readahead, max_dbs=2,
                        max_readers=options.max_readers, max_spare_txns=spare)
    except lmdb.InvalidError:
        raise FormatError(f"{path!r} is not an LMDB file; convert an ImageFolder with "
                          "'lmdbio convert SRC'") from None
    except lmdb.ReadersFullError:
        raise FormatError(f"{path!r}: all {options.max_readers} LMDB reader slots are taken "
                          "(lock=True); pass a larger max_readers, or lock=False (the default: "
                          "a finished lmdbio file never changes and needs no lock)") from None
    except lmdb.Error as exc:
        hint = (" (lock=True must create a lock file next to it: on a read-only folder use "
                "lock=False, the default)") if options.lock else ""
        raise FormatError(f"cannot open {path!r} as LMDB ({exc}); check the path and its "
                          f"permissions{hint}") from None
    try:
        _check_length(env, path)
        if options.lock:
            env.reader_check()  # free the slots of readers killed with -9 (DataLoader workers)
    except BaseException:
        env.close()
        raise
    return env


def _check_lock_file(path: str) -> None:
    """With ``lock=True`` liblmdb opens (creating, growing and writing) a lock file beside the
    database, following symlinks: one planted there by whoever can write that folder would
    have liblmdb overwrite its target. Refuse a lock file that is a link or not a file."""
    lock = os.path.join(path, "lock.mdb") if os.path.isdir(path) else path + "-lock"
    try:
        found = os.lstat(lock)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(found.st_mode) or found.st_nlink > 1:
        raise FormatError(f"{lock!r}, LMDB's lock file for {path!r}, is a symlink, a link or "
                          "not a file; remove it, or read with lock=False (the default)")


def _check_length(env: lmdb.Environment, path: str) -> None:
    """A file shorter than its last used page (an interrupted copy or download) would be
    mapped beyond its end, and reading there kills the process with SIGBUS: refuse it."""
    data = data_file(path)
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = os.path.getsize(data)
    if size < need:
        raise FormatError(f"{path!r} is truncated ({size} bytes, its pages end at {need}); "
                          "copy it again or re-convert the source")


def acquire(path: str, options: EnvOptions) -> SharedEnv:
    """This process's environment for ``path``, opened if needed; pair with ``release()``."""
    key = _identity(path)
    with _lock:
        _drop_deferred()
        shared = _envs.get(key)
        if shared is not None and shared.pid != os.getpid():
            # Inherited through fork: close our copy of the mapping (safe: a forked child
            # holds none of the parent's fcntl locks) and open afresh below.
            shared.env.close()
            shared = None
        if shared is None:
            shared = SharedEnv(_open(path, options), options, os.getpid(), key)
            _envs[key] = shared
        elif shared.options != options:
            raise OpenOptionsError(f"{path!r} is already open in this process with "
                                   f"{shared.options}; open it with the same options, not "
                                   f"{options}, or close the other reader first")
        shared.users += 1
        return shared


def open_options(path: str) -> EnvOptions | None:
    """The options ``path``'s environment is open with in this process, None where none is
    (LMDB allows one environment per file per process: a reader that only prefers a setting
    takes these and shares it, instead of failing on a setting it did not ask for)."""
    try:
        key = _identity(os.path.expanduser(path))
    except DatabaseNotFoundError:
        return None
    with _lock:
        shared = _envs.get(key)
        return shared.options if shared is not None and shared.pid == os.getpid() else None


def options_for(path: str, preferred: EnvOptions) -> EnvOptions:
    """The options ``path`` is already open with in this process, else ``preferred``: for
    readers that only prefer a setting (``info``, ``verify``, ``extract``), so they share the
    environment a Dataset holds."""
    return open_options(path) or preferred


def release(shared: SharedEnv, *, wait: bool = True) -> None:
    """Drop one use; the environment closes (its pages become evictable) with the last one.
    ``wait=False`` is for finalizers: the garbage collector can run one while this very thread
    holds the lock (inside ``acquire``), where waiting would hang for good; the release is
    then left to the next ``acquire`` or ``release``."""
    if not _lock.acquire(blocking=wait):
        _deferred.append(shared)  # list.append: atomic, takes no lock
        return
    try:
        _drop(shared)
        _drop_deferred()
    finally:
        _lock.release()


def _drop(shared: SharedEnv) -> None:
    if shared.pid != os.getpid():
        return
    shared.users -= 1
    if shared.users <= 0:
        shared.env.close()
        for key, value in list(_envs.items()):
            if value is shared:
                del _envs[key]


def _drop_deferred() -> None:
    while _deferred:
        _drop(_deferred.pop())
