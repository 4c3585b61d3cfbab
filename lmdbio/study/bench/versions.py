"""Two versions of the library side by side: does a change slow anything down?

    python -m lmdbio.study.bench versions --old COMMIT [--new COMMIT] [--pairs 8] [--no-nfs]

Each version's ``lmdbio/`` is taken from git (``--new`` defaults to the working tree) and run
in processes of its own (``version_run.py``: a cold epoch, then a warm one, of the seed
transform through 2 DataLoader workers), the two alternating in ABBA order over ``--pairs``
pairs, on the local disk and through sshfs, the DB evicted before each process. The same
harness and data for both: only the library differs. Writes ``--out`` (tidy CSV) and beside
it the same name in ``.md``: each cell's medians (range) and the paired ratio new / old.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator

from lmdbio.publish import create_exclusive, staged
from lmdbio.study.bench.perf_common import (Storage, jpeg_tree, paired_ratios, storages,
                                            write_rows)

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "version_run.py")
CACHES = ("cold", "warm")
RUN_TIMEOUT_S = 900  # one process: two epochs of a few thousand images, seconds when well


@contextlib.contextmanager
def library_tree(repo: str, commit: str | None) -> Iterator[str]:
    """A folder whose ``lmdbio/`` is the library at ``commit`` (the checkout's own working
    tree for None), to put first on ``PYTHONPATH``."""
    if commit is None:
        yield repo
        return
    with tempfile.TemporaryDirectory(prefix="lmdbio-version-") as tree:
        archive = None
        try:
            known = subprocess.run(["git", "-C", repo, "rev-parse", "--verify", "--quiet",
                                    f"{commit}^{{commit}}"], capture_output=True)
            if known.returncode:
                raise SystemExit(f"versions: {commit!r} is not a commit of {repo!r}; name one "
                                 "that 'git log' there shows")
            archive = subprocess.Popen(["git", "-C", repo, "archive", commit, "lmdbio"],
                                       stdout=subprocess.PIPE)
            unpacked = subprocess.run(["tar", "-x", "-C", tree], stdin=archive.stdout)
            archive.stdout.close()  # type: ignore[union-attr]  # git sees a closed pipe, not a hang
        except OSError as exc:  # no git or tar on PATH
            if archive is not None:
                archive.kill()
                archive.wait()
            raise SystemExit(f"versions: cannot run {exc.filename!r} ({exc.strerror}); "
                             "install git and tar") from None
        if archive.wait() or unpacked.returncode:
            raise SystemExit(f"versions: cannot take lmdbio/ at {commit!r} from {repo!r} "
                             "(git archive failed); name a commit of this checkout")
        yield tree


def run_once(tree: str, db: str, seed: int) -> dict:
    """One process of ``version_run.py`` with ``tree``'s library; checks it imported that one."""
    env = dict(os.environ, PYTHONPATH=tree)
    try:
        done = subprocess.run([sys.executable, RUNNER, db, str(seed)], env=env,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"versions: the run with {tree} on {db} took over {RUN_TIMEOUT_S} s "
                         "(two epochs take seconds): is the storage answering?") from None
    if done.returncode:
        raise SystemExit(f"versions: the run with {tree} failed: {done.stderr.strip()[-800:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if os.path.realpath(result["library"]) != os.path.realpath(tree):
        raise SystemExit(f"versions: the run meant for {tree} imported {result['library']}")
    return result


def compare(storage: Storage, db: str, trees: dict[str, str], pairs: int) -> list[dict]:
    rows = []
    for pair in range(pairs):
        order = list(trees) if pair % 2 == 0 else list(trees)[::-1]
        for version in order:
            storage.evict(db)
            result = run_once(trees[version], storage.path(db), seed=100 + pair)
            for cache in CACHES:
                rows.append({"storage": storage.name, "version": version, "pair": pair,
                             "cache": cache, "images_per_s": result[cache],
                             "ttfb_s": result[f"{cache}_ttfb_s"]})
            print(f"   [{storage.name}] pair {pair} {version}: cold {result['cold']:.0f}, "
                  f"warm {result['warm']:.0f} img/s", flush=True)
    return rows


def summary(rows: list[dict], old: str, new: str) -> list[str]:
    """One line per storage and cache: medians (range) and the paired ratio new / old, each
    pair's two runs matched by their pair number (a pair missing a run is left out)."""
    lines = []
    for storage in dict.fromkeys(r["storage"] for r in rows):
        for cache in CACHES:
            def rates(version: str) -> dict[int, float]:
                return {r["pair"]: r["images_per_s"] for r in rows
                        if (r["storage"], r["cache"], r["version"]) == (storage, cache, version)
                        and r["images_per_s"] > 0}
            before, after = rates(old), rates(new)
            paired = paired_ratios(rows, new, old, group="pair", label="version",
                                   storage=storage, cache=cache)
            if not paired:
                continue
            lines.append(
                f"{storage} {cache}: {old} {statistics.median(before.values()):.0f} "
                f"({min(before.values()):.0f}-{max(before.values()):.0f}), {new} "
                f"{statistics.median(after.values()):.0f} ({min(after.values()):.0f}-"
                f"{max(after.values()):.0f}) img/s; paired {new} / {old} "
                f"{statistics.median(paired):.3f}x [{min(paired):.3f}-{max(paired):.3f}] "
                f"over {len(paired)} pairs")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmdbio.study.bench versions",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="commit of the version to compare with")
    parser.add_argument("--new", default=None, help="commit (default: the working tree)")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--work", default="/tmp/lmdbio-perf",
                        help="generated data (shared with bench perf)")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--out", default="results/perf/versions.csv")
    parser.add_argument("--no-nfs", action="store_true", help="local disk only")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, not {args.pairs}")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(RUNNER))))
    os.makedirs(args.work, exist_ok=True)
    db = jpeg_tree(args.work, args.images) + ".lmdb"
    old, new = f"old {args.old}", f"new {args.new or 'working tree'}"
    with library_tree(repo, args.old) as old_tree, library_tree(repo, args.new) as new_tree, \
            storages(args.work, not args.no_nfs) as places:
        rows = [row for storage in places
                for row in compare(storage, db, {old: old_tree, new: new_tree}, args.pairs)]
    write_rows(rows, args.out)
    lines = summary(rows, old, new)
    notes = os.path.splitext(args.out)[0] + ".md"
    with staged(notes) as partial, create_exclusive(partial, "w") as handle:
        handle.write(f"# {new} against {old}\n\n{len(rows) // 2} processes ({args.pairs} "
                     "ABBA pairs per storage), each a cold then a warm epoch: images/s, "
                     "median (range); paired ratio median [range]\n\n"
                     + "".join(f"* {line}\n" for line in lines))
    print("\n" + "\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
