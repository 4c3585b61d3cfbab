"""When a finished notebook may be reused: produced on the same machine, by the same code, with
the same parameters. Anything else runs again.

The identity of a run, stored beside its executed notebook as ``NAME.run.json``:

* machine: host name, CPU model, cores, RAM, kernel release, and the storage under the data
  (file-system type and source of its mount);
* code: a SHA-256 over lmdbio's own files and the notebook that ran (the git commit is recorded
  too, for people: a hash also tells apart two uncommitted states of one commit, and works for
  an installed wheel, which has no commit);
* parameters: what papermill injected, with the mount point of the network-FS stand-in (a new
  temporary folder each time) replaced by what it stands for.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
from typing import Any

import lmdbio
from lmdbio.publish import create_exclusive, staged
from lmdbio.study.machine import cpu_model, git_commit, ram_gib
from lmdbio.system import fs_info

__all__ = ["code_identity", "machine_identity", "record_path", "reusable", "run_identity",
           "save_record"]


def machine_identity() -> dict[str, Any]:
    """The machine: host name, CPU, cores, RAM (GiB, rounded) and kernel release."""
    return {"hostname": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count() or 0,
            "ram_gib": round(ram_gib(), 1), "kernel": platform.release()}


def storage_identity(path: str) -> dict[str, str]:
    """The mount under ``path``: its file-system type and source."""
    try:
        fs = fs_info(path)
    except OSError:
        return {"fs_type": "unknown", "fs_source": "unknown"}
    return {"fs_type": fs.fstype, "fs_source": fs.source}


@functools.lru_cache(maxsize=None)
def _tree_digest(root: str) -> str:
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".typed")):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as handle:
                    digest.update(handle.read())
    return digest.hexdigest()


def code_identity(notebook: str) -> dict[str, str]:
    """lmdbio's version and git commit, and a SHA-256 over its files and ``notebook``."""
    digest = hashlib.sha256(_tree_digest(os.path.dirname(os.path.abspath(lmdbio.__file__)))
                            .encode())
    with open(notebook, "rb") as handle:
        digest.update(handle.read())
    return {"lmdbio": lmdbio.__version__, "git_commit": git_commit(),
            "code_sha256": digest.hexdigest()}


def run_identity(notebook: str, parameters: dict[str, Any], data_path: str) -> dict[str, Any]:
    """Everything a reused result must share with a new run of ``notebook``."""
    return {"notebook": os.path.basename(notebook), "parameters": parameters,
            "machine": machine_identity(), "storage": storage_identity(data_path),
            "code": code_identity(notebook)}


def record_path(output: str) -> str:
    """``results/ssd/bench-load.ipynb`` -> ``results/ssd/bench-load.run.json``."""
    return os.path.splitext(output)[0] + ".run.json"


def reusable(output: str, identity: dict[str, Any]) -> tuple[bool, str]:
    """Whether ``output`` exists and was produced under ``identity``; and why not."""
    if not os.path.exists(output):
        return False, "not run yet"
    try:
        with open(record_path(output)) as handle:
            earlier = json.load(handle)["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return False, "no record of what produced it"
    for part in ("machine", "storage", "code", "parameters", "notebook"):
        if earlier.get(part) != identity[part]:
            changed = sorted(k for k in set(earlier.get(part) or {}) | set(identity[part])
                             if (earlier.get(part) or {}).get(k) != identity[part].get(k)) if (
                isinstance(identity[part], dict)) else []
            return False, f"{part} differs" + (f" ({', '.join(changed[:4])})" if changed else "")
    return True, "same machine, code and parameters"


def save_record(output: str, identity: dict[str, Any], seconds: float, units: float) -> None:
    """Write ``output``'s record: its identity, how long it took and its plan's size."""
    with staged(record_path(output)) as partial, create_exclusive(partial, "w") as handle:
        json.dump({"identity": identity, "seconds": round(seconds, 1), "units": units}, handle,
                  indent=1, sort_keys=True)
