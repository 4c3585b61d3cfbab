"""Disk full, and source files that change between listing and reading.

``disk_full``: convert into small file systems (tmpfs, and ext4 in a loop-mounted file) of many
sizes, from too small to hold anything to just big enough. Each run must either succeed with a
database equal to one written on a roomy disk, or fail with the one-line "disk full" error,
leave nothing on the small file system, and leave the source untouched.

``source_change``: ``launch.py`` changes a source file right after the listing, before any file
is read (deleted, shrunk, emptied, overwritten, replaced by a directory, a dangling
symlink or a FIFO, or made unreadable to an unprivileged converter). With ``--on-error fail``:
one line naming that file, nothing under DST. With ``skip``: a complete DST that lists the file
as skipped and holds every other file unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lmdbio

from tests.helpers import build_numbered_tree

from .common import MiB, loop_ext4, one_line_error, run_cli, snapshot, tmpfs, tree_state

ARGS = ["-q", "--commit-mb", "1", "--workers", "4"]


def disk_full(workdir: Path, sizes: list[int], kinds: tuple[str, ...] = ("tmpfs", "ext4"),
              images: int = 400, edge: int = 0, log: Any = print) -> dict[str, Any]:
    """Convert into each file system size of ``sizes``; with ``edge``, also find the smallest
    size that fits (bisection) and try ``edge`` sizes just below it, 4 KiB apart, where the
    disk fills during the last commit, the final metadata commit or the publishing."""
    workdir.mkdir(parents=True, exist_ok=True)
    tree = workdir / "src"
    if not tree.exists():
        build_numbered_tree(tree, images, side=96)
    reference_path = workdir / "roomy.lmdb"
    if not reference_path.exists():
        done = run_cli("convert", tree, reference_path, *ARGS)
        assert done.returncode == 0, done.stderr
    reference = snapshot(reference_path)
    before = tree_state(tree)
    runs: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []

    def attempt(kind: str, size: int) -> dict[str, Any]:
        mountpoint = workdir / "small"
        progress = workdir / "progress.json"
        progress.unlink(missing_ok=True)
        mount = (tmpfs(mountpoint, size) if kind == "tmpfs"
                 else loop_ext4(mountpoint, workdir / "ext4.img", size))
        try:
            with mount:
                dst = mountpoint / "out.lmdb"
                done = run_cli("convert", tree, dst, *ARGS, hooks={"progress": os.fspath(progress)})
                left = sorted(set(os.listdir(mountpoint)) - {"lost+found"})
                same = done.returncode == 0 and snapshot(dst) == reference
                line = one_line_error(done)
        except OSError as exc:  # mkfs/mount refused this size: not a lmdbio result
            run = {"fs": kind, "size": size, "skipped": str(exc)}
            runs.append(run)
            return run
        where = json.loads(progress.read_text()) if progress.exists() else {}
        phase = ("done" if done.returncode == 0 else "publishing" if where.get("finished")
                 else "final metadata commit" if where.get("finishing")
                 else f"records commit {where.get('commits')}" if where.get("commits")
                 else "creating the file")
        run = {"fs": kind, "size": size, "exit": done.returncode, "phase": phase, "left": left}
        runs.append(run)
        ok = (same and left == ["out.lmdb"]) if done.returncode == 0 else (
            line is not None and "disk full" in line and str(dst) in line and left == [])
        if not ok:
            failures.append({**run, "stderr": done.stderr[-400:], "same": same})
        return run

    for kind in kinds:
        fits = [attempt(kind, size) for size in sizes]
        if not edge:
            continue
        low = max((r["size"] for r in fits if r.get("exit") == 1), default=16 << 10)
        high = min((r["size"] for r in fits if r.get("exit") == 0), default=64 * MiB)
        while high - low > 4096:  # smallest size that fits, to 4 KiB
            middle = (low + high) // 2 // 4096 * 4096
            if middle in (low, high):
                break
            if attempt(kind, middle).get("exit") == 0:
                high = middle
            else:
                low = middle
        for step in range(1, edge + 1):
            attempt(kind, high - step * 4096)
    if tree_state(tree) != before:
        failures.append({"problem": "the source tree changed"})
    tried = [r for r in runs if "skipped" not in r]
    phases: dict[str, int] = {}
    for r in tried:
        phases[r["phase"]] = phases.get(r["phase"], 0) + 1
    summary = {"runs": len(tried), "disk_full_errors": sum(r["exit"] == 1 for r in tried),
               "succeeded": sum(r["exit"] == 0 for r in tried), "phases": phases,
               "skipped_sizes": [r for r in runs if "skipped" in r],
               "bytes_left_behind": 0 if not any(r["left"] and r["exit"] for r in tried)
               else "some", "failures": failures}
    log(f"disk full: {summary['runs']} runs on {', '.join(kinds)}, "
        f"{summary['disk_full_errors']} clean 'disk full' errors, {summary['succeeded']} fits, "
        f"phases {phases}, {len(failures)} failures")
    return summary


ACTIONS = {  # action: (launch.py mutation, its argument, words the error must contain)
    "deleted": ("unlink", None, "No such file"),
    "shrunk": ("truncate", 1000, "changed while converting"),
    "emptied": ("truncate", 0, "changed while converting"),
    "overwritten": ("rewrite", None, "not a readable image"),
    "directory": ("to_dir", None, "Is a directory"),
    "dangling symlink": ("to_dangling_symlink", None, "No such file"),
    "fifo": ("to_fifo", None, "not a regular file"),
    "read error": ("to_symlink", "/proc/self/mem", "Input/output error"),  # EIO, even for root
    "unreadable": ("chmod", 0, "Permission denied"),  # run as nobody: root reads mode 000
}


def nobody_problem() -> str | None:
    """Why the converter cannot run as an unprivileged user here, or None."""
    import subprocess
    import sys

    if os.geteuid() != 0:
        return "changing user needs root"
    try:
        done = subprocess.run([sys.executable, "-c", "import lmdbio"], user=65534, group=65534,
                              extra_groups=[], capture_output=True, timeout=60, cwd="/")
    except PermissionError as exc:
        return f"user nobody cannot run {sys.executable} ({exc.strerror})"
    if done.returncode != 0:
        return f"user nobody cannot import lmdbio: {done.stderr.decode()[-200:]}"
    return None


def _nobody_workspace() -> Path:
    """A folder an unprivileged converter can write (pytest's are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="lmdbio-nobody-"))
    os.chmod(folder, 0o777)
    return folder


def source_change(workdir: Path, action: str, mode: str, images: int = 60) -> dict[str, Any]:
    """One conversion whose source file ``class1/00031.jpg`` suffers ``action`` after listing.
    "unreadable" runs the converter as ``nobody`` (root reads any file)."""
    as_nobody = action == "unreadable"
    base = _nobody_workspace() if as_nobody else workdir
    try:
        tree = build_numbered_tree(base / "src", images, side=32)
        victim = tree / "class1" / "00031.jpg"
        originals = {p: p.read_bytes() for p in tree.rglob("*.jpg") if p != victim}
        dst = base / "out.lmdb"
        mutation, argument, needle = ACTIONS[action]
        record = base / "record.json"
        kwargs: dict[str, Any] = {}
        if as_nobody:
            for path in [base, *base.rglob("*")]:
                os.chown(path, 65534, 65534)
            kwargs = {"user": 65534, "group": 65534, "extra_groups": []}
        done = run_cli("convert", tree, dst, *ARGS, "--on-error", mode,
                       hooks={"after_listing": [[mutation, os.fspath(victim), argument]],
                              "record": os.fspath(record)}, timeout=120, **kwargs)
        hooked = record.exists()
        problems = [] if hooked else ["the after-listing hook never ran"]
        untouched = all(p.read_bytes() == data for p, data in originals.items())
        if not untouched:
            problems.append("other source files changed")
        leftovers = sorted(p.name for p in base.iterdir() if p.name.startswith("out.lmdb"))
        if mode == "fail":
            line = one_line_error(done)
            if line is None or str(victim) not in line or needle not in line:
                problems.append(f"not a one-line error naming the file: {done.stderr[-300:]}")
            if leftovers:
                problems.append(f"left {leftovers}")
        else:
            if done.returncode != 0:
                problems.append(f"skip mode failed: {done.stderr[-300:]}")
            else:
                with lmdbio.open_database(dst) as db:
                    skipped = dict(db.meta.skipped)
                    stored = {tree / rel: db.get(i)[1] for i, rel in
                              enumerate(db.relative_paths())}
                if list(skipped) != ["class1/00031.jpg"] or needle not in skipped.get(
                        "class1/00031.jpg", ""):
                    problems.append(f"skipped list is {skipped}")
                if stored != originals:
                    problems.append("the database does not hold exactly the other files")
                if not lmdbio.verify(dst).ok:
                    problems.append("verify failed")
            if leftovers != ["out.lmdb"]:
                problems.append(f"left {leftovers}")
        return {"action": action, "mode": mode, "exit": done.returncode,
                "stderr": done.stderr.strip()[-300:], "problems": problems}
    finally:
        if as_nobody:
            shutil.rmtree(base, ignore_errors=True)


def source_changes(workdir: Path, log: Any = print) -> dict[str, Any]:
    results, skipped = [], {}
    for action in ACTIONS:
        if action == "unreadable" and nobody_problem():
            skipped[action] = nobody_problem()
            continue
        for mode in ("fail", "skip"):
            folder = workdir / f"{action.replace(' ', '-')}-{mode}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            results.append(source_change(folder, action, mode))
    problems = [r for r in results if r["problems"]]
    log(f"source changes: {len(results)} runs (changes x fail/skip), {len(problems)} with "
        f"problems; skipped: {skipped or 'none'}")
    return {"runs": len(results), "changes": sorted({r["action"] for r in results}),
            "skipped": skipped, "failures": problems}


def sizes_for_sweep(quick: bool) -> list[int]:
    """From too small for LMDB's first pages to enough for the ~2.7 MB database."""
    if quick:
        return [16 << 10, 64 << 10, 1 * MiB, 2500 << 10, 4 * MiB]
    return [16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 * MiB,
            3 * MiB // 2, 2 * MiB, 5 * MiB // 2, 3 * MiB, 4 * MiB, 8 * MiB]
