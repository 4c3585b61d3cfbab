"""Shared pieces of the performance benchmarks (``python -m lmdbio.study.bench perf``): the
data, the storages, cold/warm control, the limits every figure is compared with, and the rows.

Data (generated once under ``--work``, reused by later runs):
* ``jpeg-N/train``: the synthetic cats-vs-dogs JPEG tree (~30 KB, ~500x375) and its ``.lmdb``;
* ``raw/jpeg-N-xR``: the same JPEGs repeated ``--replicas`` times (real files, hard copies) so raw
  reads last long enough to time on a fast disk; its ``.lmdb`` and a seed-style pickled DB.
Storages: ``ssd`` (local disk) and ``nfs-sshfs`` (the same folder through sshd on 127.0.0.1 +
sshfs, see ``lmdbio.netfs``). Cold = every reader closed, pages evicted on both sides.
"""

from __future__ import annotations

import contextlib
import csv
import os
import pickle
import shutil
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import lmdb

import lmdbio
from lmdbio.folder import find_classes, make_dataset
from lmdbio.publish import create_exclusive, discard, staged
from lmdbio.study import netfs, pagecache
from lmdbio.study.profiling import machine_cpu_s
from lmdbio.study.synthetic import ensure_dataset

MB = 1e6
CEILING = "ceiling: in memory, PIL decode"              # target 3's variants (perf_loader)
STORAGE_READ = "storage: cold sequential read of the DB"
PAIRS = "ceiling and lmdbio alone"    # target 3a's own phase of the loader section


@dataclass(frozen=True)
class Storage:
    """One place the data is read from; ``backing`` are the same files server-side (evicted
    too for a cold run)."""

    name: str
    root: str            # the work folder as this storage shows it
    local_root: str      # the same folder on local disk

    def path(self, relative: str) -> str:
        return os.path.join(self.root, relative)

    def evict(self, relative: str) -> None:
        pagecache.evict(self.path(relative))
        if self.root != self.local_root:
            pagecache.evict(os.path.join(self.local_root, relative))


@contextlib.contextmanager
def storages(work: str, with_nfs: bool) -> Iterator[list[Storage]]:
    """Local disk, and sshfs over the same folder when possible (always unmounted after)."""
    local = [Storage("ssd", work, work)]
    ok, why = netfs.available()
    if not with_nfs or not ok:
        if with_nfs:
            print(f"nfs-sshfs skipped: {why}", flush=True)
        yield local
        return
    with netfs.SshfsMount(work) as mount:
        yield local + [Storage("nfs-sshfs", str(mount.mountpoint), work)]


def jpeg_tree(work: str, images: int) -> str:
    """The synthetic JPEG tree (relative path of its split) and its lmdbio database."""
    split = ensure_dataset(os.path.join(work, f"jpeg-{images}"), images)
    if not os.path.exists(f"{split}.lmdb"):
        lmdbio.convert(split, f"{split}.lmdb", progress=False)
    return os.path.relpath(split, work)


def raw_tree(work: str, jpeg_split: str, replicas: int) -> str:
    """``replicas`` copies of every JPEG (same class, new names), converted twice: lmdbio, and
    the seed's format (pickled ``(bytes, label)``, str keys) for the seed-style baseline."""
    tree = os.path.basename(os.path.dirname(os.path.join(work, jpeg_split)))  # jpeg-N
    split = os.path.join(work, "raw", f"{tree}-x{replicas}")
    source = os.path.join(work, jpeg_split)
    if not os.path.isdir(split):
        with staged(split) as partial:
            for path, _ in make_dataset(source, find_classes(source)[1]):
                folder = os.path.join(partial, os.path.basename(os.path.dirname(path)))
                os.makedirs(folder, exist_ok=True)
                stem, ext = os.path.splitext(os.path.basename(path))
                for copy in range(replicas):
                    shutil.copyfile(path, os.path.join(folder, f"{stem}.r{copy}{ext}"))
    if not os.path.exists(f"{split}.lmdb"):
        lmdbio.convert(split, f"{split}.lmdb", progress=False)
    if not os.path.exists(f"{split}.seed.lmdb"):
        write_seed_db(split, f"{split}.seed.lmdb")
    return os.path.relpath(split, work)


def write_seed_db(split: str, dst: str) -> None:
    """The seed's layout: pickle((jpeg bytes, label)) under str(i), ``__keys__``/``__len__``."""
    samples = make_dataset(split, find_classes(split)[1])
    with staged(dst) as partial:
        work = partial + ".work"  # written in key order, then compacted into the partial
        discard(work)
        try:
            env = lmdb.open(work, subdir=False, map_size=1 << 36, meminit=False, lock=False)
            with env.begin(write=True) as txn:
                for i, (path, label) in enumerate(samples):
                    with open(path, "rb") as handle:
                        txn.put(str(i).encode(), pickle.dumps((handle.read(), label)))
                keys = [str(i).encode() for i in range(len(samples))]
                txn.put(b"__keys__", pickle.dumps(keys))
                txn.put(b"__len__", pickle.dumps(len(keys)))
            env.copy(partial, compact=True)  # shrunk to its pages, as the seed's after use
            env.close()
        finally:
            discard(work)


def sequential_mb_s(storage: Storage, relative: str, chunk: int = 8 << 20) -> float:
    """Cold sequential read bandwidth of one file on ``storage``: the storage limit."""
    return sequential_read(storage, relative, chunk)[0]


def sequential_read(storage: Storage, relative: str,
                    chunk: int = 8 << 20) -> tuple[float, float]:
    """One cold sequential read of a file on ``storage``: (MB/s, CPU seconds the whole machine
    spent meanwhile: the reader's copies, the kernel's I/O and, on a network FS, its client and
    server processes; what any reader pays to get the bytes in once)."""
    storage.evict(relative)
    busy = machine_cpu_s()[0]
    start = time.perf_counter()
    total = pagecache.read_through(storage.path(relative), chunk)
    elapsed = time.perf_counter() - start
    return total / MB / elapsed, machine_cpu_s()[0] - busy


def tree_sequential_mb_s(storage: Storage, relative: str) -> float:
    """Cold read of every file of a tree in ImageFolder order, one after the other."""
    storage.evict(relative)
    root = storage.path(relative)
    paths = [p for p, _ in make_dataset(root, find_classes(root)[1])]
    start = time.perf_counter()
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            total += len(handle.read())
    return total / MB / (time.perf_counter() - start)


def storage_bound(ceiling: float, ceiling_cpu_ms: float, storage_cpu_ms: float) -> float:
    """Images/s of the in-memory ceiling (``ceiling``, ``ceiling_cpu_ms`` machine CPU per
    image) once each image also costs the storage's ``storage_cpu_ms`` to read it in: the same
    busy cores share the extra CPU, so the rate falls in proportion to the CPU per image."""
    return ceiling * ceiling_cpu_ms / (ceiling_cpu_ms + storage_cpu_ms)


def median(rows: list[dict], key: str, **where: object) -> float:
    values = [r[key] for r in rows if all(r.get(k) == v for k, v in where.items())]
    return statistics.median(values) if values else float("nan")


def paired_ratios(rows: list[dict], variant: str, base: str, key: str = "images_per_s", *,
                  group: str = "repeat", label: str = "variant", **where: object) -> list[float]:
    """``variant``'s ``key`` over ``base``'s (the two named by the ``label`` column) within
    each repetition (the ``group`` column; rows matching ``where``): the two ran in the same
    stretch of time, so the VM's slow drift cancels out of each ratio. A repetition missing
    either rate (or holding NaN, or none above 0) is left out, not paired with another."""
    by_group: dict[object, dict[str, list[float]]] = {}
    for row in rows:
        value = row.get(key)
        if (row.get(label) in (variant, base) and value is not None and value > 0
                and all(row.get(k) == v for k, v in where.items())):  # NaN > 0 is False
            by_group.setdefault(row[group], {}).setdefault(row[label], []).append(value)
    return [statistics.median(rates[variant]) / statistics.median(rates[base])
            for _, rates in sorted(by_group.items(), key=lambda item: str(item[0]))
            if variant in rates and base in rates]


def spread(values: Sequence[float], digits: int, unit: str = "") -> str:
    """``median{unit} (min-max)`` of ``values``, each with ``digits`` decimals."""
    return (f"{statistics.median(values):.{digits}f}{unit} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def write_rows(rows: list[dict], path: str) -> None:
    """One tidy CSV per section, written via a temp name."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with staged(path) as partial, create_exclusive(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)


def banner(title: str, limits: dict[str, float]) -> None:
    """Every section starts by printing the limits its figures are measured against."""
    print(f"\n== {title}", flush=True)
    for name, value in limits.items():
        print(f"   limit: {name} = {value:,.1f}", flush=True)
