"""Many readers on one database while a conversion writes elsewhere; killed readers' slots.

``readers``: ``plain`` separate processes (``Database.get`` in a seeded random order) plus one
process iterating a DataLoader with ``workers`` workers, all reading the same file at once,
while conversions of another tree run back to back into another file. Every record each reader
sees must be the stored one; every conversion must finish and verify.

``stale_slots``: with ``lock=True`` (LMDB's reader table, ``max_readers`` slots) a long-lived
process keeps the database open while, round after round, reader processes holding a read
transaction and DataLoader workers are killed with SIGKILL, many more than there are slots. A
new reader must still get a slot each round (lmdbio reaps dead readers' slots when it opens).
With the default ``lock=False`` there is no reader table at all.

Run as ``python -m tests.torture.concurrency ROLE ...`` (from the repository root), this module
is also the reader/holder/loader child process.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.helpers import REPO

ME = "tests.torture.concurrency"  # the child processes: python -m ME ROLE ..., cwd=REPO


def digest(data: bytes) -> str:
    """The DataLoader's ``decode``: compare bytes, skip JPEG decoding (2 cores, 16 readers)."""
    return hashlib.sha256(data).hexdigest()


def expected_of(path: Path) -> list[list[Any]]:
    import lmdbio

    with lmdbio.open_database(path) as db:
        return [[label, digest(data)] for label, data in (db.get(i) for i in range(len(db)))]


# -- child processes ------------------------------------------------------------------------------


def _options(lock: bool, max_readers: int) -> Any:
    from lmdbio.envs import EnvOptions

    return EnvOptions(lock=lock, max_readers=max_readers)


def child_reader(db: str, expected: str, seed: int, passes: int, lock: bool,
                 max_readers: int) -> dict[str, Any]:
    import lmdbio

    want = json.loads(Path(expected).read_text())
    order = list(range(len(want))) * passes
    random.Random(seed).shuffle(order)
    bad = 0
    with lmdbio.open_database(db, _options(lock, max_readers)) as handle:
        for index in order:
            label, data = handle.get(index)
            bad += [label, digest(data)] != want[index]
    return {"read": len(order), "bad": bad, "pid": os.getpid()}


def child_loader(db: str, expected: str, workers: int, passes: int, lock: bool,
                 max_readers: int, kill_rounds: int) -> dict[str, Any]:
    """Iterate a DataLoader; with ``kill_rounds``, SIGKILL all its workers mid-epoch that many
    times (each time after they read a few batches), then read a whole epoch."""
    import torch  # noqa: F401 - DataLoader
    from torch.utils.data import DataLoader

    from lmdbio.dataset import ImageFolderLMDB

    want = json.loads(Path(expected).read_text())
    dataset = ImageFolderLMDB(db, decode=digest, lock=lock, max_readers=max_readers)
    loader = DataLoader(dataset, batch_size=16, num_workers=workers,
                        multiprocessing_context="fork")  # in order: compare index by index
    killed = 0
    for _ in range(kill_rounds):
        iterator = iter(loader)
        for _ in range(workers):  # every worker has opened the database and read
            next(iterator)
        workers_ = list(iterator._workers)  # noqa: SLF001 - the point of the test
        # PyTorch reports dead workers from its SIGCHLD handler, at any moment while the
        # iterator has them registered (even between two kills): kill, reap and shut the
        # iterator down inside guards. (A killed, unreaped worker is a zombie: killing it
        # again is harmless.)
        pending = list(workers_)
        while pending:
            try:
                while pending:
                    os.kill(pending[0].pid, signal.SIGKILL)
                    pending.pop(0)
                    killed += 1
            except (RuntimeError, OSError, EOFError):
                pass
        try:
            for worker in workers_:
                worker.join(timeout=60)
            time.sleep(0.05)
            for _ in iterator:
                pass
        except (RuntimeError, OSError, EOFError):
            pass  # "DataLoader worker (pid ...) is killed by signal", or its pipe reset
        try:
            iterator._shutdown_workers()  # noqa: SLF001 - unregisters the dead pids
        except (RuntimeError, OSError, EOFError):
            pass
        del iterator
    seen = bad = 0
    for _ in range(passes):
        index = 0
        for digests, targets in loader:
            for got_digest, target in zip(digests, targets.tolist()):
                bad += [target, got_digest] != want[index]
                index += 1
                seen += 1
    dataset.close()
    return {"read": seen, "bad": bad, "workers_killed": killed,
            "expected": len(want) * passes}


def child_holder(db: str, lock: bool, max_readers: int) -> None:
    """Open, hold a read transaction (a reader slot), say so, and wait to be killed."""
    import lmdbio

    handle = lmdbio.open_database(db, _options(lock, max_readers))
    env, samples, _ = handle._handles()  # noqa: SLF001
    txn = env.begin(db=samples)
    txn.get(b"\0" * 8)
    print("holding", flush=True)
    time.sleep(600)


# -- drivers --------------------------------------------------------------------------------------


def _spawn(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", ME, *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {err.strip()[-400:]}"}
    return json.loads(out.strip().splitlines()[-1])


def readers(workdir: Path, plain: int = 8, workers: int = 8, passes: int = 2,
            lock: bool = False, images: int = 400, log: Any = print) -> dict[str, Any]:
    """``plain`` reader processes + a DataLoader with ``workers`` workers on one database,
    while conversions run back to back into another file."""
    import lmdbio

    from tests.helpers import build_numbered_tree

    from .common import cli_command

    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    db = workdir / "shared.lmdb"
    if not db.exists():
        lmdbio.convert(build_numbered_tree(workdir / "src", images), db, progress=False, workers=2)
    expected = workdir / "expected.json"
    expected.write_text(json.dumps(expected_of(db)))
    other_tree = workdir / "other-src"
    if not other_tree.exists():
        build_numbered_tree(other_tree, 1200, side=96, seed=3)
    children = [_spawn("reader", db, expected, seed, passes, int(lock), 126)
                for seed in range(plain)]
    children.append(_spawn("loader", db, expected, workers, passes, int(lock), 126, 0))
    conversions, conversion_errors = 0, []
    while any(child.poll() is None for child in children):
        argv, env = cli_command("convert", other_tree, workdir / "elsewhere.lmdb", "-q",
                                "--overwrite", "--commit-mb", "1", "--workers", "4")
        done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        conversions += 1
        if done.returncode != 0 or not lmdbio.verify(workdir / "elsewhere.lmdb").ok:
            conversion_errors.append(done.stderr.strip()[-300:])
    results = [_result(child, 600) for child in children]
    problems = [r["error"] for r in results if "error" in r]
    problems += [f"{r['bad']} wrong records" for r in results if r.get("bad")]
    loader = results[-1]
    if "expected" in loader and loader["read"] != loader["expected"]:
        problems.append(f"the DataLoader saw {loader['read']} of {loader['expected']} samples")
    problems += conversion_errors
    summary = {"reader_processes": plain + workers, "lock": lock,
               "records_read": sum(r.get("read", 0) for r in results),
               "wrong_records": sum(r.get("bad", 0) for r in results),
               "conversions_meanwhile": conversions, "problems": problems,
               "seconds": round(time.monotonic() - started, 1)}
    log(f"readers: {plain} processes + {workers} DataLoader workers (lock={lock}) read "
        f"{summary['records_read']} records, {summary['wrong_records']} wrong, "
        f"{conversions} conversions meanwhile, {len(problems)} problems, {summary['seconds']} s")
    return summary


def stale_slots(workdir: Path, max_readers: int = 8, rounds: int = 4, per_round: int = 4,
                loader_rounds: int = 3, images: int = 200, log: Any = print) -> dict[str, Any]:
    """Kill readers holding slots, ``rounds`` x ``per_round`` processes plus ``loader_rounds``
    x 4 DataLoader workers, with ``max_readers`` slots, while one process keeps the database
    open; a new reader must read every round."""
    import lmdbio

    from tests.helpers import build_numbered_tree

    from .common import kill_tree

    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    db = workdir / "slots.lmdb"
    if not db.exists():
        lmdbio.convert(build_numbered_tree(workdir / "slots-src", images), db, progress=False,
                       workers=2)
    expected = workdir / "slots.json"
    expected.write_text(json.dumps(expected_of(db)))
    keeper = lmdbio.open_database(db, _options(True, max_readers))  # the long-lived reader
    keeper.get(0)
    problems, killed = [], 0
    try:
        for round_ in range(rounds):
            holders = [_spawn("holder", db, 1, max_readers) for _ in range(per_round)]
            try:
                for holder in holders:
                    line = holder.stdout.readline()  # type: ignore[union-attr]
                    if line.strip() != "holding":
                        problems.append(f"round {round_}: a holder could not open: "
                                        f"{holder.stderr.read().strip()[-300:]}")  # type: ignore[union-attr]
            finally:
                for holder in holders:
                    kill_tree(holder)
                    killed += holder.returncode == -signal.SIGKILL
            check = _result(_spawn("reader", db, expected, round_, 1, 1, max_readers), 300)
            if check.get("error") or check.get("bad"):
                problems.append(f"round {round_}: a new reader failed: {check}")
        loader = _result(_spawn("loader", db, expected, 4, 1, 1, max_readers, loader_rounds),
                         600)
        if loader.get("error") or loader.get("bad") or loader.get("read") != loader.get(
                "expected"):
            problems.append(f"DataLoader after killed workers: {loader}")
        killed += loader.get("workers_killed", 0)
        slots_in_use = len(keeper._handles()[0].readers().splitlines()) - 1  # noqa: SLF001
    finally:
        keeper.close()
    summary = {"max_readers": max_readers, "readers_killed": killed,
               "new_readers_ok": rounds - sum("new reader" in p for p in problems),
               "slots_in_use_after": slots_in_use, "problems": problems,
               "seconds": round(time.monotonic() - started, 1)}
    log(f"stale slots: {killed} readers killed holding slots of {max_readers}, "
        f"{len(problems)} problems, {summary['seconds']} s")
    return summary


if __name__ == "__main__":
    role, rest = sys.argv[1], sys.argv[2:]
    if role == "reader":
        db, expected, seed, passes, lock, max_readers = rest
        print(json.dumps(child_reader(db, expected, int(seed), int(passes), lock == "1",
                                      int(max_readers))))
    elif role == "loader":
        db, expected, workers, passes, lock, max_readers, kill_rounds = rest
        print(json.dumps(child_loader(db, expected, int(workers), int(passes), lock == "1",
                                      int(max_readers), int(kill_rounds))))
    elif role == "holder":
        db, lock, max_readers = rest
        child_holder(db, lock == "1", int(max_readers))
    else:
        sys.exit(f"unknown role {role!r}")
