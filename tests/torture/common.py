"""Helpers shared by the torture drivers and the reliability tests: source-tree state, database
comparison, mounts, and running the converter (optionally instrumented) in a real process.

The trees themselves come from ``tests.helpers`` (``build_numbered_tree``). ``run_cli`` here
differs from ``tests.helpers.run_cli``: it can instrument the converter (``hooks``, through
``python -m tests.torture.launch``), waits 300 s and runs unbuffered."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from lmdbio.format import KEY_HEADER, KEY_HEADER_CRC, META_DB, SAMPLES_DB, header_checksum
from lmdbio.system import mounts

from tests.helpers import REPO

# The instrumented CLI, run as ``python -m LAUNCH`` from the repository root.
LAUNCH = "tests.torture.launch"

MiB = 1 << 20

# -- source trees (built by tests.helpers.build_numbered_tree) -----------------------------------


def tree_state(root: Path) -> dict[str, tuple[int, int, str]]:
    """``{relative path: (mode, mtime_ns, sha256)}`` of every entry: "the source untouched"."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        state[os.fsdecode(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, digest)
    return state


# -- databases ------------------------------------------------------------------------------------

_CREATED = re.compile(rb'"created_utc": "[^"]*"')


@dataclass(frozen=True)
class Snapshot:
    """Every record and metadata value of an lmdbio file, raw bytes (``created_utc`` blanked)."""

    records: dict[bytes, bytes]
    meta: dict[bytes, bytes]

    def lost_bytes(self, reference: Snapshot) -> int:
        """Bytes of ``reference`` that this snapshot lacks or holds differently."""
        lost = sum(len(v) for k, v in reference.records.items() if self.records.get(k) != v)
        lost += sum(len(v) for k, v in reference.meta.items() if self.meta.get(k) != v)
        lost += sum(len(v) for k, v in self.records.items() if k not in reference.records)
        return lost + sum(len(v) for k, v in self.meta.items() if k not in reference.meta)


def snapshot(path: str | os.PathLike[str]) -> Snapshot:
    env = lmdb.open(os.fspath(path), subdir=False, readonly=True, lock=False, max_dbs=2)
    try:
        samples = env.open_db(SAMPLES_DB, create=False)
        meta = env.open_db(META_DB, create=False)
        with env.begin() as txn:
            records = dict(txn.cursor(db=samples))
            metadata = dict(txn.cursor(db=meta))
    finally:
        env.close()
    if KEY_HEADER in metadata:
        if KEY_HEADER_CRC in metadata:  # it covers created_utc: checked here, then set aside
            assert metadata.pop(KEY_HEADER_CRC) == header_checksum(metadata[KEY_HEADER])
        metadata[KEY_HEADER] = _CREATED.sub(b'"created_utc": ""', metadata[KEY_HEADER])
    return Snapshot(records, metadata)


def partial_state(partial: Path) -> tuple[str, int]:
    """What a killed run left in ``DST.partial``: ``(state, records)`` with state one of
    ``absent``, ``empty`` (created, nothing committed), ``records`` (checkpointed commits),
    ``complete`` (finished but not renamed), ``unreadable``."""
    if not partial.exists():
        return "absent", 0
    if partial.stat().st_size == 0:
        return "empty", 0
    try:
        env = lmdb.open(os.fspath(partial), subdir=False, readonly=True, lock=False, max_dbs=2)
    except lmdb.Error:
        return "unreadable", 0
    try:
        try:
            samples = env.open_db(SAMPLES_DB, create=False)
            meta = env.open_db(META_DB, create=False)
        except lmdb.NotFoundError:
            return "empty", 0
        with env.begin() as txn:
            entries = txn.stat(samples)["entries"]
            if txn.get(b"complete", db=meta) == b"1":
                return "complete", entries
            return ("records" if txn.get(b"progress", db=meta) else "empty"), entries
    finally:
        env.close()


# -- processes ------------------------------------------------------------------------------------


def cli_command(*args: object, hooks: dict | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and environment for ``lmdbio ARGS`` in a fresh interpreter; with ``hooks``, through
    ``python -m tests.torture.launch``, which instruments the converter (kill points, source
    mutations): run it with ``cwd=REPO``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if hooks is None:
        return [sys.executable, "-m", "lmdbio.cli", *map(os.fspath, args)], env
    env["LMDBIO_TORTURE"] = json.dumps(hooks)
    return [sys.executable, "-m", LAUNCH, *map(os.fspath, args)], env


def run_cli(*args: object, hooks: dict | None = None, timeout: float = 300,
            **kwargs) -> subprocess.CompletedProcess[str]:
    argv, env = cli_command(*args, hooks=hooks)
    return subprocess.run(argv, capture_output=True, text=True, errors="backslashreplace",
                          timeout=timeout, cwd=REPO, env=env, **kwargs)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str | None:
    """The single ``lmdbio: error:`` line of a failed CLI run, or None if it is not that."""
    lines = proc.stderr.splitlines()
    if proc.returncode != 1 or "Traceback" in proc.stderr or len(lines) != 1:
        return None
    return lines[0] if lines[0].startswith("lmdbio: error: ") else None


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process we started (by its id) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


# -- mounts ---------------------------------------------------------------------------------------


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True)


def mount_problem() -> str | None:
    """Why this process cannot mount file systems, or None if it can."""
    if os.geteuid() != 0:
        return "mounting needs root"
    if not shutil.which("mount") or not shutil.which("umount"):
        return "mount/umount not installed"
    return None


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    return any(info.mount_point == target for info in mounts())


def unmount(path: Path) -> None:
    """Unmount, retrying while a just-killed process still holds files; lazily as a last
    resort so no mount outlives the run."""
    for _ in range(50):
        if not is_mounted(path) or _run("umount", os.fspath(path)).returncode == 0:
            return
        time.sleep(0.1)
    _run("umount", "-l", os.fspath(path))


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes at ``mountpoint`` (created), unmounted afterwards."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                os.fspath(mountpoint))
    if done.returncode != 0:
        raise OSError(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


@contextlib.contextmanager
def loop_ext4(mountpoint: Path, image: Path, size: int) -> Iterator[Path]:
    """An ext4 file system of ``size`` bytes in the file ``image``, loop-mounted (no journal,
    so nearly all of it is data blocks); unmounted and the loop device freed afterwards."""
    if not shutil.which("mkfs.ext4"):
        raise OSError("mkfs.ext4 is not installed")
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as handle:
        handle.truncate(size)
    made = _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", "-N", "64",
                os.fspath(image))
    if made.returncode != 0:
        raise OSError(f"mkfs.ext4 failed: {made.stderr.strip()}")
    done = _run("mount", "-o", "loop", os.fspath(image), os.fspath(mountpoint))
    if done.returncode != 0:
        raise OSError(f"cannot loop-mount: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)  # "mount -o loop" sets autoclear: the loop device goes with it
        with contextlib.suppress(FileNotFoundError):
            image.unlink()


@contextlib.contextmanager
def readonly_bind(source: Path, mountpoint: Path) -> Iterator[Path]:
    """``source`` visible read-only at ``mountpoint`` (a real ro mount: root cannot write)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "--bind", os.fspath(source), os.fspath(mountpoint))
    if done.returncode != 0:
        raise OSError(f"cannot bind-mount: {done.stderr.strip()}")
    try:
        done = _run("mount", "-o", "remount,bind,ro", os.fspath(mountpoint))
        if done.returncode != 0:
            raise OSError(f"cannot remount read-only: {done.stderr.strip()}")
        yield mountpoint
    finally:
        unmount(mountpoint)


def system_mounts() -> list[str]:
    """tmpfs/loop/sshfs mount points now, to check that a run left none behind."""
    return [info.mount_point for info in mounts()
            if re.search(r"tmpfs|loop|sshfs", f"{info.fstype} {info.source}")]
