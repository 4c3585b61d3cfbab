"""``kill -9`` of a real conversion at seeded random and instrumented points, then ``--resume``.

After every kill ``DST`` must be absent or a complete database equal to the expected one (in
``--overwrite`` trials: the old or the new one, nothing in between). The final ``--resume``
must give records and metadata byte-identical to an uninterrupted conversion
(``created_utc`` aside), leave nothing but ``DST`` in its folder, and lose 0 bytes.

Trials alternate between *random* kills (a SIGKILL from this process at a time drawn from the
measured duration of an uninterrupted run: from the start, or from when ``DST.partial``
appears) and *instrumented* kills (``tests/torture/launch.py``) at points random timing almost
never hits: inside a records transaction, while LMDB commits it, during the final metadata commit,
and around each system call of the final rename. Some trials kill the resumed run again.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import lmdbio

from tests.helpers import build_numbered_tree

from .common import REPO, cli_command, kill_tree, partial_state, snapshot

ARGS = ["-q", "--commit-mb", "1", "--workers", "2", "--on-error", "skip"]
# One cycle of trial kinds; a run of N trials walks it N times mod its length, so a short run
# still reaches a commit and the rename. "overwrite" kinds start from an older DST.
SCHEDULE = ["random", "commit", "random", "after-link", "random", "txn", "random", "finish",
            "random", "before-link", "random-overwrite", "after-unlink", "random", "commit",
            "random-overwrite", "before-replace", "random", "finish", "random-overwrite",
            "after-replace"]


class Setup:
    def __init__(self, workdir: Path, images: int, log: Any) -> None:
        self.workdir = workdir
        bad = (7, images - 1)  # one skipped file before the first commit, one at the very end
        self.tree = build_numbered_tree(workdir / "src", images, side=96, bad=bad)
        self.old_tree = build_numbered_tree(workdir / "old-src", 40, side=48, seed=1)
        self.durations, self.windows = [], []
        for attempt in range(3):  # uninterrupted runs: the reference and the timings
            dst = workdir / f"reference{attempt}.lmdb"
            started = time.monotonic()
            argv, env = cli_command("convert", self.tree, dst, *ARGS)
            proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            partial, appeared = Path(f"{dst}.partial"), None
            while proc.poll() is None:
                if appeared is None and partial.exists():
                    appeared = time.monotonic()
                time.sleep(0.0005)
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"reference conversion failed: {err.decode()}")
            ended = time.monotonic()
            self.durations.append(ended - started)
            self.windows.append(ended - (appeared or started))
        self.reference = snapshot(workdir / "reference0.lmdb")
        for attempt in (1, 2):
            assert snapshot(workdir / f"reference{attempt}.lmdb") == self.reference
        argv, env = cli_command("convert", self.old_tree, workdir / "old.lmdb", "-q")
        subprocess.run(argv, env=env, cwd=REPO, check=True, capture_output=True)
        self.old = snapshot(workdir / "old.lmdb")
        timings = workdir / "timings.json"
        argv, env = cli_command("convert", self.tree, workdir / "timed.lmdb", *ARGS,
                                hooks={"timings": os.fspath(timings)})
        subprocess.run(argv, env=env, cwd=REPO, check=True, capture_output=True)
        self.commit_seconds = json.loads(timings.read_text())  # records commits..., finish
        self.duration = sorted(self.durations)[1]
        self.window = sorted(self.windows)[1]
        log(f"kill: {images} images, {len(self.reference.records)} records, uninterrupted "
            f"{self.duration:.2f} s (partial exists for {self.window:.2f} s), "
            f"{len(self.commit_seconds) - 1} commits + finish")


def _classify(dst: Path, setup: Setup, overwrite: bool) -> str:
    partial = Path(f"{dst}.partial")
    state, entries = partial_state(partial)
    if dst.exists() and not overwrite:
        return "published" + (" (partial name left)" if partial.exists() else "")
    if state == "records":
        total = len(setup.reference.records)
        if entries == total:
            return "partial, all records committed, metadata not yet"
        return f"partial, {entries} of {total} records committed"
    if overwrite and dst.exists() and snapshot(dst) == setup.reference:
        return "replaced" + (" (partial name left)" if partial.exists() else "")
    return {"absent": "before partial", "empty": "partial created, nothing committed",
            "complete": "complete, not renamed", "unreadable": "partial unreadable"}[state]


def _check_dst(dst: Path, setup: Setup, overwrite: bool) -> str | None:
    """None if DST is absent or a complete database equal to an allowed one, else why not."""
    if not dst.exists():
        return "DST missing in an --overwrite trial" if overwrite else None
    try:
        with lmdbio.open_database(dst) as db:
            len(db)
        got = snapshot(dst)
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding
        return f"DST exists but does not open: {type(exc).__name__}: {exc}"
    allowed = [setup.reference] + ([setup.old] if overwrite else [])
    if got not in allowed:
        return f"DST differs from every allowed database ({got.lost_bytes(setup.reference)} " \
               "bytes differ from the reference)"
    return None


def _killed_run(dst: Path, setup: Setup, kind: str, rng: random.Random, flags: list[str],
                record: Path) -> tuple[str, dict[str, Any]]:
    """One conversion killed per ``kind``; returns the point hit and what the hook recorded."""
    record.unlink(missing_ok=True)
    if kind.startswith("random"):
        from_start = rng.random() < 1 / 3
        delay = rng.uniform(0, 1.1 * (setup.duration if from_start else setup.window))
        argv, env = cli_command("convert", setup.tree, dst, *ARGS, *flags)
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            if not from_start:
                partial = Path(f"{dst}.partial")
                while proc.poll() is None and not partial.exists():
                    time.sleep(0.0005)
            time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=120)
        finally:
            kill_tree(proc)
        if proc.returncode == 0:
            return "random: finished before the kill", {}
        if proc.returncode != -signal.SIGKILL:
            return "random: FAILED", {"returncode": proc.returncode, "stderr": err.decode()}
        return "random", {}
    at = kind
    hook: dict[str, Any] = {"at": at}
    if at in ("txn", "commit"):
        hook["nth"] = rng.randint(1, len(setup.commit_seconds) - 1)
        if at == "commit":
            hook["delay"] = rng.uniform(0, setup.commit_seconds[hook["nth"] - 1])
    elif at == "finish":
        hook["delay"] = rng.uniform(0, setup.commit_seconds[-1])
    argv, env = cli_command("convert", setup.tree, dst, *ARGS, *flags,
                            hooks={"kill": hook, "record": os.fspath(record)})
    proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, timeout=120)
    try:
        where = json.loads(record.read_text())
    except (OSError, ValueError):  # no record, or the process exited while writing it
        where = {}
    if proc.returncode != -signal.SIGKILL:
        if proc.returncode == 0 and at in ("commit", "finish"):
            return f"{at}: finished before the timer", where  # the commit beat the timer
        return f"{at}: FAILED", {"returncode": proc.returncode, "stderr": proc.stderr.decode()}
    if at in ("commit", "finish"):
        return f"{at}: {'inside' if where.get('inside') else 'just after'} the commit", where
    return at, where


def run(workdir: Path, trials: int, seed: int = 0, images: int = 500,
        log: Any = print) -> dict[str, Any]:
    """Run ``trials`` seeded trials under ``workdir``; returns a JSON-able summary."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    setup = Setup(workdir, images, log)
    rng = random.Random(seed)
    points: collections.Counter[str] = collections.Counter()
    phases: collections.Counter[str] = collections.Counter()
    failures: list[dict[str, Any]] = []
    kills = bytes_lost = resumed_records = 0
    for trial in range(trials):
        kind = SCHEDULE[trial % len(SCHEDULE)]
        overwrite = "overwrite" in kind or "replace" in kind
        kind = kind.replace("-overwrite", "")
        folder = workdir / f"trial{trial:03d}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        dst = folder / "out.lmdb"
        if overwrite:
            shutil.copyfile(workdir / "old.lmdb", dst)
        flags = ["--overwrite"] if overwrite else []
        rounds = rng.choice([1, 1, 1, 2, 3])  # some resumed runs are killed again
        trial_failures = []
        for round_ in range(rounds):
            if round_ and dst.exists() and not overwrite:
                break  # published: nothing left to resume
            point, where = _killed_run(dst, setup, kind if round_ == 0 else "random", rng,
                                       flags + (["--resume"] if round_ else []),
                                       workdir / "record.json")
            kills += not point.endswith(("before the kill", "before the timer"))
            points[point] += 1
            if "FAILED" in point:
                trial_failures.append({"point": point, **where})
                break
            phases[_classify(dst, setup, overwrite)] += 1
            problem = _check_dst(dst, setup, overwrite)
            if problem:
                trial_failures.append({"point": point, "round": round_, "problem": problem})
        final_flags = ["--resume"] + (["--overwrite"] if dst.exists() else [])
        argv, env = cli_command("convert", setup.tree, dst, *ARGS, *final_flags)
        proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        if proc.returncode != 0:
            trial_failures.append({"problem": "resume failed", "stderr": proc.stderr})
        else:
            if "resumed after" in proc.stdout:
                resumed_records += int(proc.stdout.split("resumed after ")[1].split()[0])
            got = snapshot(dst)
            bytes_lost += got.lost_bytes(setup.reference)
            if got != setup.reference:
                trial_failures.append({"problem": "resumed database differs",
                                       "bytes": got.lost_bytes(setup.reference)})
            if sorted(os.listdir(folder)) != ["out.lmdb"]:
                trial_failures.append({"problem": f"left behind: {sorted(os.listdir(folder))}"})
        if trial_failures:
            failures.append({"trial": trial, "kind": kind, "overwrite": overwrite,
                             "failures": trial_failures})
        shutil.rmtree(folder, ignore_errors=True)
    summary = {
        "trials": trials, "seed": seed, "images": images, "kills": kills,
        "records": len(setup.reference.records),
        "uninterrupted_seconds": round(setup.duration, 3),
        "kill_points": dict(sorted(points.items())),
        "states_after_kill": dict(sorted(phases.items())),
        "records_kept_by_resume": resumed_records, "bytes_lost": bytes_lost,
        "failures": failures, "seconds": round(time.monotonic() - started, 1),
    }
    log(f"kill: {trials} trials, {kills} kills, bytes lost {bytes_lost}, "
        f"{len(failures)} failed trials, {summary['seconds']} s")
    return summary
