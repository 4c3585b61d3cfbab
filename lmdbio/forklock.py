"""A lock for module state that a forked child starts with unlocked.

Why: ``os.fork`` copies a lock in the state it is in. A fork taken while another thread of the
parent held it (a prefetch thread, a reader thread) would leave it held for good in the child,
whose first ``with lock:`` would then hang; DataLoader workers are such children.
"""

from __future__ import annotations

import os
import threading

__all__ = ["ForkSafeLock"]


class ForkSafeLock:
    """``threading.Lock`` as a context manager, replaced by a fresh one in a forked child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._renew)  # kept for the life of the process

    def _renew(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, blocking: bool = True) -> bool:
        return self._lock.acquire(blocking)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
