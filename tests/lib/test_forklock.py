"""ForkSafeLock: a child forked while another thread of the parent holds the lock gets it
unlocked (a plain ``threading.Lock`` stays held in the child for good)."""

from __future__ import annotations

import os
import threading

from lmdbio.forklock import ForkSafeLock


def test_a_child_forked_while_the_lock_is_held_can_take_it() -> None:
    lock = ForkSafeLock()
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: the holder thread does not exist here
        os._exit(0 if lock._lock.acquire(timeout=2) else 1)
    _, status = os.waitpid(pid, 0)
    release.set()
    thread.join()
    assert os.waitstatus_to_exitcode(status) == 0
    with lock:  # and in the parent it is the same lock as before, free again
        pass
