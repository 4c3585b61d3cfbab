"""Target 5: per-worker memory of ImageFolderLMDB, flat in the number of samples.

Two lmdbio files of tiny records (32 bytes each: the record count is what matters here) with
10 000 and 1 000 000 samples. A DataLoader (2 workers, fork and spawn) reads the same 10 000
random samples from each; just before its last batch, each worker's ``/proc/PID/smaps_rollup``
is read. The overhead of the Dataset is the worker's PSS minus that of a worker serving a
trivial dataset of the same length (the interpreter, torch and the DataLoader machinery).
Anonymous PSS is the Dataset's own memory; file-backed PSS is the page cache of the records
read, mapped by LMDB (shared between workers, reclaimable), reported beside it.
"""

from __future__ import annotations

import os
import random
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from lmdbio.dataset import ImageFolderLMDB
from lmdbio.format import Metadata
from lmdbio.publish import staged
from lmdbio.writer import LmdbWriter
from lmdbio.study.bench.perf_common import banner

PAYLOAD = b"\xff\xd8" + b"\0" * 30   # 32 bytes; never decoded (decode=len)
SIZES = (10_000, 1_000_000)
READ = 10_000


def tiny_db(work: str, n: int) -> str:
    """An lmdbio file of ``n`` 32-byte records (labels alternate), written with the converter's
    writer so the layout is the real one."""
    path = os.path.join(work, "memory", f"tiny-{n}.lmdb")
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with staged(path) as partial:
        writer = LmdbWriter(partial)
        step = 50_000
        for start in range(0, n, step):
            count = min(step, n - start)
            writer.commit(start, [(i % 2, PAYLOAD) for i in range(start, start + count)],
                          {"position": start + count})
        paths = [f"{('cat', 'dog')[i % 2]}/{i:07d}.jpg" for i in range(n)]
        writer.finish(Metadata(num_samples=n, classes=["cat", "dog"], source_root="/synthetic",
                               source_fingerprint="tiny", extensions=[".jpg"],
                               payload_bytes=n * len(PAYLOAD)),
                      paths, [i % 2 for i in range(n)])
    return path


class Trivial(Dataset):
    """The baseline: same length, same sample type, no storage behind it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[int, int]:
        return len(PAYLOAD), index % 2


def smaps(pid: int) -> dict[str, int]:
    """Bytes per field of ``/proc/PID/smaps_rollup`` (Rss, Pss, Pss_Anon, Pss_File...)."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields


def worker_memory(dataset: Any, n: int, context: str) -> list[dict[str, int]]:
    indices = random.Random(0).sample(range(n), min(READ, n))
    loader = DataLoader(dataset, batch_size=256, sampler=indices, num_workers=2,
                        multiprocessing_context=context)
    iterator = iter(loader)
    for _ in range(len(loader) - 1):
        next(iterator)
    measured = [smaps(w.pid) for w in iterator._workers]  # noqa: SLF001 (pids of the workers)
    del iterator
    return measured


def bench_memory(work: str) -> list[dict]:
    rows = []
    torch.set_num_threads(1)
    for context in ("fork", "spawn"):
        for n in SIZES:
            path = tiny_db(work, n)
            base = worker_memory(Trivial(n), n, context)
            dataset = ImageFolderLMDB(path, decode=len, prefetch=False)
            workers = worker_memory(dataset, n, context)
            dataset.close()
            for rank, (got, ref) in enumerate(zip(workers, base)):
                rows.append({"target": 5, "context": context, "samples": n, "worker": rank,
                             "db_mb": os.path.getsize(path) / 1e6, "read": min(READ, n),
                             **{f"{k.lower()}_mb": v / 1e6 for k, v in got.items()
                                if k in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Anonymous")},
                             "pss_overhead_mb": (got["Pss"] - ref["Pss"]) / 1e6,
                             "anon_overhead_mb": (got["Pss_Anon"] - ref["Pss_Anon"]) / 1e6})
    banner("target 5: per-worker memory of ImageFolderLMDB over the number of samples",
           {"records read per run": READ})
    for context in ("fork", "spawn"):
        for n in SIZES:
            mine = [r for r in rows if r["context"] == context and r["samples"] == n]
            print(f"   {context}, {n:>9,} samples: worker PSS {max(r['pss_mb'] for r in mine):.0f}"
                  f" MB, Dataset overhead PSS {max(r['pss_overhead_mb'] for r in mine):+.1f} MB "
                  f"(anonymous {max(r['anon_overhead_mb'] for r in mine):+.1f} MB)", flush=True)
    return rows
