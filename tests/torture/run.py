"""``make torture``: the long fault-injection runs behind docs/RELIABILITY.md.

    python -m tests.torture.run [--trials 100] [--examples 3000] [--out work/torture/summary.json]

Run from the repository root. Runs every driver in tests/torture/ with large counts (about 5
minutes on 2 cores), prints one line per guarantee, writes the whole summary as JSON, and exits
1 if any guarantee failed.
Mounts (tmpfs, loop ext4, read-only binds) need root; without it those parts are skipped and
the summary says why. Nothing is left behind: temporary folders, mounts and processes go.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import lmdb

import lmdbio

from tests.helpers import REPO
from tests.torture import concurrency, faults, fuzz, kill
from tests.torture.common import mount_problem, system_mounts


def _failed(name: str, part: dict) -> list[str]:
    found = []
    for key in ("failures", "problems"):
        if part.get(key):
            found.append(f"{name}: {len(part[key])} {key}")
    if part.get("bytes_lost"):
        found.append(f"{name}: {part['bytes_lost']} bytes lost")
    if part.get("missed"):
        found.append(f"{name}: {part['missed']} bit flips missed")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.torture.run",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="kill -9 trials")
    parser.add_argument("--examples", type=int, default=3000,
                        help="hypothesis examples per damage family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "work" / "torture" / "summary.json")
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a "
                        "temporary folder, removed)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    mounts_before = system_mounts()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lmdbio-torture-"))
    workdir.mkdir(parents=True, exist_ok=True)
    summary: dict = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "lmdbio": lmdbio.__version__,
                    "py-lmdb": lmdb.__version__,
                    "liblmdb": ".".join(map(str, lmdb.version()))},
        "arguments": {"trials": args.trials, "examples": args.examples, "seed": args.seed},
    }
    print(f"torture: work in {workdir}", flush=True)
    try:
        summary["kill"] = kill.run(workdir / "kill", args.trials, seed=args.seed)
        summary["fuzz"] = fuzz.fuzz(workdir / "fuzz", args.examples, seed=args.seed)
        summary["bitflips"] = fuzz.bitflips(workdir / "bitflips", sample=None, seed=args.seed)
        problem = mount_problem()
        if problem:
            summary["disk_full"] = {"skipped": problem}
            print(f"disk full: skipped ({problem})")
        else:
            summary["disk_full"] = faults.disk_full(workdir / "disk-full",
                                                    faults.sizes_for_sweep(quick=False), edge=24)
        summary["source_changes"] = faults.source_changes(workdir / "source-changes")
        summary["readers"] = concurrency.readers(workdir / "readers", plain=8, workers=8,
                                                 passes=3, images=600)
        summary["readers_locked"] = concurrency.readers(workdir / "readers", plain=8,
                                                        workers=8, passes=2, lock=True,
                                                        images=600)
        summary["stale_slots"] = concurrency.stale_slots(
            workdir / "slots", max_readers=16, rounds=8, per_round=8, loader_rounds=5)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    left = sorted(set(system_mounts()) - set(mounts_before))
    failed = [f for name, part in summary.items() if isinstance(part, dict)
              for f in _failed(name, part)]
    if left:
        failed.append(f"mounts left behind: {left}")
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["failed"] = failed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1, sort_keys=False) + "\n")
    print(f"torture: {'FAILED: ' + '; '.join(failed) if failed else 'every guarantee held'} "
          f"in {summary['seconds']} s; summary in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
