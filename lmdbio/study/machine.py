"""What a result was measured on: machine, versions, commit, file system. Stored in every row."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any

from lmdbio.system import fs_info

__all__ = ["run_metadata"]

_PACKAGES = ("torch", "torchvision", "lmdb", "pillow", "numpy", "lmdbio")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


def _git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--", ".."],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def run_metadata(storage: str, data_path: str) -> dict[str, Any]:
    """Columns describing the machine and the storage under ``data_path``."""
    fs = fs_info(data_path)
    return {
        "storage": storage,
        "fs_type": fs.fstype,
        "fs_source": fs.source,
        "mount_options": fs.options,
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "ram_gib": round(_ram_gib(), 1),
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        **{f"v_{name}": _version(name) for name in _PACKAGES},
    }
