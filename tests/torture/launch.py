"""``lmdbio`` CLI with test instrumentation, configured by the JSON in $LMDBIO_TORTURE.

    LMDBIO_TORTURE='{...}' python -m tests.torture.launch convert SRC DST ...   # from the repo root

Nothing in lmdbio reads this: the hooks wrap lmdbio's functions from outside, in this process
only, so the product has no test switches. Hooks (all optional):

``kill``: ``{"at": POINT, "nth": N, "delay": SECONDS}``: SIGKILL this process at a point random
    timing cannot hit reliably. POINT is

    * ``txn``: inside the N-th records transaction, after its records were put (nothing of the
      transaction is on disk yet);
    * ``commit``: ``delay`` seconds after the N-th records transaction began committing (LMDB
      writes its pages, fsyncs, writes the meta page, fsyncs; py-lmdb releases the GIL meanwhile
      so this thread's timer fires inside it, or just after it returned);
    * ``finish``: like ``commit``, for the last transaction (metadata + completion flag);
    * ``before-link`` / ``after-link`` / ``after-unlink`` / ``before-replace`` /
      ``after-replace``: around the system calls that publish ``DST.partial`` as ``DST``.

``record``: a file where the hook writes, just before killing, where it struck, e.g.
    ``{"point": "commit", "nth": 2, "inside": true}`` (``inside``: the commit had not returned).
``after_listing``: ``[[ACTION, PATH, ARG], ...]`` applied right after the source was listed and
    before any file is read: ``unlink``, ``truncate`` (to ARG bytes), ``rewrite`` (same size,
    other bytes), ``chmod`` (ARG mode), ``to_dir``, ``to_dangling_symlink``, ``to_fifo``,
    ``to_symlink`` (to ARG).
``timings``: a file where commit durations (seconds) are written at exit, to size ``delay``.
``progress``: a file where, at exit, ``{"commits": records transactions begun, "finishing":
    the final metadata transaction began, "finished": it and the sync ended}`` is written
    (where a disk filled up).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import lmdbio.converter
import lmdbio.writer
from lmdbio.cli import main

CONFIG = json.loads(os.environ.get("LMDBIO_TORTURE") or "{}")
KILL = CONFIG.get("kill") or {}
TIMINGS: list[float] = []
STATE: dict = {"commits": 0, "in": None, "finishing": False, "finished": False}


def die(**where: object) -> None:
    if CONFIG.get("record"):
        with open(CONFIG["record"], "w") as handle:
            json.dump(where, handle)
            handle.flush()
            os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def _require(owner: object, name: str) -> None:
    if not hasattr(owner, name):  # lmdbio was restructured: fail loudly, never test nothing
        sys.exit(f"tests/torture/launch.py: {owner!r} has no {name!r}; update the hooks")


def instrument_writer() -> None:
    writer = lmdbio.writer.LmdbWriter
    for name in ("commit_encoded", "finish", "_append", "_commit_with_growth"):
        _require(writer, name)
    state = STATE
    append, commit_with_growth = writer._append, writer._commit_with_growth
    writer_commit, finish = writer.commit_encoded, writer.finish

    def timed_kill(point: str, nth: int) -> None:
        def fire() -> None:
            die(point=point, nth=nth, inside=state["in"] == (point, nth))
        timer = threading.Timer(float(KILL.get("delay", 0.0)), fire)
        timer.daemon = True
        timer.start()

    def _append_hook(self, txn, items, checkpoint):
        result = append(self, txn, items, checkpoint)
        n = state["commits"]
        if KILL.get("at") == "txn" and KILL.get("nth") == n:
            die(point="txn", nth=n, inside=True)
        if KILL.get("at") == "commit" and KILL.get("nth") == n:
            state["in"] = ("commit", n)
            timed_kill("commit", n)  # the with-block's commit follows at once
        return result

    def _commit_hook(self, body, batch_bytes):
        if state["finishing"] and KILL.get("at") == "finish":
            state["in"] = ("finish", 1)
            timed_kill("finish", 1)  # the metadata transaction: body and commit
        started = time.perf_counter()
        try:
            return commit_with_growth(self, body, batch_bytes)
        finally:
            state["in"] = None
            TIMINGS.append(time.perf_counter() - started)

    def commit_hook(self, first_index, values, checkpoint):
        # every records transaction goes through commit_encoded (commit() calls it too)
        state["commits"] += 1
        return writer_commit(self, first_index, values, checkpoint)

    def finish_hook(self, meta, relative_paths, targets):
        state["finishing"] = True
        result = finish(self, meta, relative_paths, targets)
        state["finished"] = True
        return result

    writer._append = _append_hook
    writer._commit_with_growth = _commit_hook
    writer.commit_encoded = commit_hook
    writer.finish = finish_hook


def instrument_publish() -> None:
    point = KILL.get("at", "")
    real = {name: getattr(os, name) for name in ("link", "unlink", "replace", "rename")}

    def is_publish(src: object, dst: object = None) -> bool:
        return os.fspath(src).endswith(".partial") and (
            dst is None or os.fspath(src) == os.fspath(dst) + ".partial")

    def link(src, dst, *args, **kwargs):
        if is_publish(src, dst) and point == "before-link":
            die(point=point)
        result = real["link"](src, dst, *args, **kwargs)
        if is_publish(src, dst) and point == "after-link":
            die(point=point)
        return result

    def unlink(path, *args, **kwargs):
        result = real["unlink"](path, *args, **kwargs)
        if is_publish(path) and point == "after-unlink":
            die(point=point)
        return result

    def replace(src, dst, *args, **kwargs):
        if is_publish(src, dst) and point == "before-replace":
            die(point=point)
        result = real["replace"](src, dst, *args, **kwargs)
        if is_publish(src, dst) and point == "after-replace":
            die(point=point)
        return result

    os.link, os.unlink, os.replace = link, unlink, replace


def _mutate(action: str, path: str, arg: object) -> None:
    if action == "unlink":
        os.unlink(path)
    elif action == "truncate":
        os.truncate(path, int(arg))  # type: ignore[arg-type]
    elif action == "rewrite":
        size = os.path.getsize(path)
        with open(path, "r+b") as handle:
            handle.write(bytes(size))
    elif action == "chmod":
        os.chmod(path, int(arg))  # type: ignore[arg-type]
    elif action == "to_dir":
        os.unlink(path)
        os.mkdir(path)
    elif action == "to_dangling_symlink":
        os.unlink(path)
        os.symlink(path + ".gone", path)
    elif action == "to_symlink":  # e.g. to /proc/self/mem: opens, then read() fails with EIO
        os.unlink(path)
        os.symlink(str(arg), path)
    elif action == "to_fifo":
        os.unlink(path)
        os.mkfifo(path)
    else:
        sys.exit(f"tests/torture/launch.py: unknown action {action!r}")


def instrument_listing() -> None:
    module = sys.modules["lmdbio.converter"]
    _require(module, "list_source")
    list_source = module.list_source

    def hook(*args, **kwargs):
        listing = list_source(*args, **kwargs)
        for action, path, arg in CONFIG["after_listing"]:
            _mutate(action, path, arg)
        if CONFIG.get("record"):
            with open(CONFIG["record"], "w") as handle:
                json.dump({"point": "after_listing", "files": len(listing)}, handle)
        return listing

    module.list_source = hook


def write_timings() -> None:
    if CONFIG.get("timings"):
        with open(CONFIG["timings"], "w") as handle:
            json.dump(TIMINGS, handle)
    if CONFIG.get("progress"):
        with open(CONFIG["progress"], "w") as handle:
            json.dump({key: STATE[key] for key in ("commits", "finishing", "finished")}, handle)


if __name__ == "__main__":
    instrument_writer()
    if KILL.get("at", "").startswith(("before-", "after-")):
        instrument_publish()
    if CONFIG.get("after_listing"):
        instrument_listing()
    try:
        code = main(sys.argv[1:])
    finally:
        write_timings()
    sys.exit(code)
