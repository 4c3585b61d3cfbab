"""SIGTERM as an interrupt: ``kill`` or a job scheduler's time limit stops a command the way
Ctrl-C does, so the same clean-ups run (temporary files; in the study, mounts, relays and
cgroups). Used by the CLI's ``run_guarded`` and by the study's harness."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

__all__ = ["Terminated", "raise_terminated", "sigterm_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler's time limit), raised where Ctrl-C would be so that
    the same clean-ups run: temporary files, and in the study its mounts, relays and groups."""


_OWNER: list[int] = []  # the pids that made SIGTERM an interrupt, innermost last


def raise_terminated(signum: int, frame: Any) -> None:
    """The SIGTERM handler of ``sigterm_as_interrupt``. A process forked from its owner (a pool
    worker, a DataLoader worker) inherits it but not the clean-ups: there SIGTERM does what it
    always did, end the process."""
    if _OWNER and os.getpid() != _OWNER[-1]:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Python's default for SIGTERM is to die on the spot, skipping every ``finally``."""
    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    _OWNER.append(os.getpid())
    try:
        yield
    finally:
        _OWNER.pop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
