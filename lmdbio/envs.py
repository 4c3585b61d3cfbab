"""Per-process, fork-aware sharing of read-only LMDB environments.

py-lmdb refuses to open one file twice in a process, and an environment inherited through
``fork()`` must not be used by the child (py-lmdb#350, pytorch#9753). So every reader goes
through ``acquire()``: one environment per file per process, reference-counted, reopened
lazily in whichever process reads. Nothing here is pickled; readers drop their handle in
``__getstate__`` and call ``acquire()`` again in the worker.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import lmdb

from .errors import DatabaseNotFoundError, FormatError
from .format import data_file

__all__ = ["EnvOptions", "SharedEnv", "acquire", "options_for", "release"]


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
    users: int = 0


_lock = threading.Lock()
_envs: dict[tuple[int, int], SharedEnv] = {}


def _reset_lock_in_child() -> None:
    # A fork taken while another thread held the lock would leave it held forever.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_in_child)


def _identity(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise DatabaseNotFoundError(f"database {path!r} does not exist; create it with "
                                    "'lmdbio convert SRC DST'") from None
    return stat.st_dev, stat.st_ino


def _open(path: str, options: EnvOptions) -> lmdb.Environment:
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "data.mdb")):
        # e.g. the ImageFolder itself was passed; LMDB would say "No such file or directory"
        raise FormatError(f"{path!r} is a folder, not a database; to convert an ImageFolder "
                          "run 'lmdbio convert SRC', then read the .lmdb file it writes")
    # With a lock file, a spare read transaction owns a slot of the reader table, which is
    # shared memory: a forked DataLoader worker that closes its inherited copy (as acquire()
    # does) would abort that transaction and free the parent's slot, which a sibling then
    # takes (MDB_BAD_RSLOT; tests/test_reliability_concurrency.py). So no spares with a lock.
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
        shared = _envs.get(key)
        if shared is not None and shared.pid != os.getpid():
            # Inherited through fork: close our copy of the mapping (safe: a forked child
            # holds none of the parent's fcntl locks) and open afresh below.
            shared.env.close()
            shared = None
        if shared is None:
            shared = SharedEnv(_open(path, options), options, os.getpid())
            _envs[key] = shared
        elif shared.options != options:
            raise FormatError(f"{path!r} is already open in this process with {shared.options};"
                              f" open it with the same options, not {options}")
        shared.users += 1
        return shared


def options_for(path: str, preferred: EnvOptions) -> EnvOptions:
    """The options ``path`` is already open with in this process, else ``preferred``.

    For readers that only prefer a setting (``info``, ``verify``, ``extract``): they then share
    the environment a Dataset holds instead of failing on an option mismatch.
    """
    try:
        key = _identity(os.path.expanduser(path))
    except DatabaseNotFoundError:
        return preferred
    with _lock:
        shared = _envs.get(key)
        if shared is not None and shared.pid == os.getpid():
            return shared.options
    return preferred


def release(shared: SharedEnv) -> None:
    """Drop one use; the environment closes (its pages become evictable) with the last one."""
    with _lock:
        if shared.pid != os.getpid():
            return
        shared.users -= 1
        if shared.users <= 0:
            shared.env.close()
            for key, value in list(_envs.items()):
                if value is shared:
                    del _envs[key]
