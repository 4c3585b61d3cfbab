"""The prefetch schedules tried last for issue #17, on the `startup` section's terms
(``make bench-perf``: 3 000 images cold through the sshfs stand-in, seed transform, batch 128,
2 workers, ``load`` and ``emulate`` with a 100 ms step, ABBA order, LitData beside them).

Run from the checkout: ``.venv/bin/python results/perf/startup-schedules/variants.py
--startup-repeats 8``. It patches the library for the experiment only, nothing of it is
built: each stream thread of a variant can run at ``SCHED_IDLE`` (the kernel gives it a core
only when no other thread wants one), read in smaller chunks (so it yields more often),
use fewer streams, start after a delay or after a DataLoader worker's first batch fetch (a
flag in memory shared across the fork), and ``fetch_records`` can serve every cold batch
instead of a cold start's first 256 records. ``VARIANTS`` below is the last run's choice;
the CSVs beside it are the runs that README.md here summarises.
"""
import contextlib
import mmap
import os
import sys
import time

import lmdbio.database as database
import lmdbio.prefetch as prefetch
import lmdbio.study.bench.perf as perf
from lmdbio.dataset import ImageFolderLMDB
from lmdbio.study.bench import perf_startup
from lmdbio.study.harness import seed_transform

GATE = mmap.mmap(-1, 1)  # MAP_SHARED: set by a worker, read by the stream in the parent
MODE = {"idle": False, "chunk": prefetch.CHUNK_BYTES, "streams": None, "delay": 0.0,
        "gate": False}


class Variant(prefetch.Prefetcher):
    def __init__(self, path, chunk_bytes=prefetch.CHUNK_BYTES, streams=1):
        super().__init__(path, MODE["chunk"], MODE["streams"] or streams)

    def _run(self, stream):
        if MODE["idle"]:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # this thread only
        if MODE["gate"]:
            end = time.monotonic() + 1.0
            while GATE[0] == 0 and time.monotonic() < end and not self._stop.is_set():
                time.sleep(0.002)
        if MODE["delay"]:
            time.sleep(MODE["delay"])
        super()._run(stream)


prefetch.Prefetcher = Variant
_fetch = database.Database.fetch_records


def fetch_and_open_gate(self, records):
    _fetch(self, records)
    GATE[0] = 1


database.Database.fetch_records = fetch_and_open_gate

VARIANTS = {  # name: (SCHED_IDLE, chunk bytes, streams (None: lmdbio's), delay s, gate, fetch all)
    "lmdbio": (False, 8 << 20, None, 0.0, False, False),
    "stream at SCHED_IDLE, 256 KiB reads": (True, 256 << 10, None, 0.0, False, False),
    "stream at SCHED_IDLE, 1 MiB reads, 1 stream": (True, 1 << 20, 1, 0.0, False, False),
}
_conditions = perf_startup._conditions


def conditions(storage, files, spec):
    chosen = []
    for name, evict, factory in _conditions(storage, files, spec):
        if name == "lmdbio":
            path, transform = storage.path(files["lmdb"]), seed_transform()
            for variant, (idle, chunk, streams, delay, gate, fetch_all) in VARIANTS.items():
                def make(idle=idle, chunk=chunk, streams=streams, delay=delay, gate=gate,
                         fetch_all=fetch_all):
                    MODE.update(idle=idle, chunk=chunk, streams=streams, delay=delay, gate=gate)
                    database.FETCH_FIRST = 1 << 40 if fetch_all else 256
                    GATE[0] = 0
                    return ImageFolderLMDB(path, transform)
                chosen.append((variant, evict, make))
        elif name in ("LitData", "lmdbio, prefetch=False"):
            chosen.append((name, evict, factory))
    return chosen


perf_startup._conditions = conditions
perf_startup.STRATEGIES = (*VARIANTS, "lmdbio, prefetch=False", "LitData")
perf_startup.CEILING = "(not run)"
_storages = perf.storages


@contextlib.contextmanager
def sshfs_only(work, with_nfs):
    with _storages(work, with_nfs) as places:
        yield places[1:]


perf.storages = sshfs_only
if __name__ == "__main__":
    sys.exit(perf.main(["--only", "startup", "--out", "/tmp/startup-schedules", *sys.argv[1:]]))
