"""What a result was measured on: machine, versions, commit, file system. Stored in every row."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any

from lmdbio.system import fs_info

__all__ = ["cpu_model", "git_commit", "ram_gib", "run_metadata"]

_PACKAGES = ("torch", "torchvision", "lmdb", "pillow", "numpy", "lmdbio")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float:
    """Physical memory, GiB."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


def git_commit(root: str | None = None) -> str:
    """The checkout's short HEAD, ``-dirty`` if anything but ``results/`` changed in its tree
    (a run writes its own results there as it goes: they would mark every later row of it
    dirty); ``unknown`` outside a git checkout (e.g. an installed wheel). ``root``: the
    checkout (default: the one this package lives in)."""
    here = root or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--show-toplevel", "--short",
                              "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--", ".",
                                ":(exclude)results"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2 or os.path.realpath(lines[0]) != os.path.realpath(
            here):  # an installed package inside some other repository's tree
        return "unknown"
    return lines[1] + ("-dirty" if dirty.stdout.strip() else "")


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
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 0,
        "ram_gib": round(ram_gib(), 1),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        **{f"v_{name}": _version(name) for name in _PACKAGES},
    }
