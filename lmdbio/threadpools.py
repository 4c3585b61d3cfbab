"""This process's thread pools, one per job, made on first use.

Why per process: threads do not survive ``os.fork``, but a pool object does, with its queue
and its dead workers; a DataLoader worker forked from a process that had used a pool would
submit to it and wait forever. A pool is therefore keyed by the process that made it, and a
child makes its own on first use. ``concurrent.futures`` is imported only then, so
``import lmdbio`` stays light.
"""

from __future__ import annotations

import os
from typing import Any

from .forklock import ForkSafeLock

__all__ = ["pool"]

_pools: dict[str, tuple[int, Any]] = {}  # name -> (pid that made it, ThreadPoolExecutor)
_lock = ForkSafeLock()


def pool(name: str, workers: int) -> Any:
    """This process's ``ThreadPoolExecutor`` called ``name`` (its threads' name prefix), with
    ``workers`` threads; the same one on every call in one process."""
    with _lock:
        made = _pools.get(name)
        if made is None or made[0] != os.getpid():
            from concurrent.futures import ThreadPoolExecutor

            made = _pools[name] = (os.getpid(), ThreadPoolExecutor(workers, name))
        return made[1]
