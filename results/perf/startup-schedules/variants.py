"""The prefetch schedules tried last for issue #17, on the `startup` section's terms
(``make bench-perf``: 3 000 images cold through the sshfs stand-in, seed transform, batch 128,
2 workers, ``load`` and ``emulate`` with a 100 ms step, ABBA order, LitData beside them).

Run from the checkout: ``.venv/bin/python results/perf/startup-schedules/variants.py
--run sched-idle --startup-repeats 8``. It patches the library for the experiment only, nothing of it is
built: each stream thread of a variant can run at ``SCHED_IDLE`` (the kernel gives it a core
only when no other thread wants one), read in smaller chunks (so it yields more often),
use fewer streams, start after a delay or after a DataLoader worker's first batch fetch (a
flag in memory shared across the fork), and ``fetch_records`` can serve every cold batch
instead of a cold start's first 256 records; or, without a stream (``prefetch=False``), a
batch's records can be decoded as they arrive (``arrival_order``). ``--run NAME`` picks one
of ``RUNS``, the runs whose CSVs are beside this file (README.md here summarises them).
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


def streamed(idle=False, chunk=8 << 20, streams=None, delay=0.0, gate=False, fetch_all=False):
    """A dataset factory: lmdbio's defaults with its stream changed as the options say."""
    def make(path, transform):
        MODE.update(idle=idle, chunk=chunk, streams=streams, delay=delay, gate=gate)
        database.FETCH_FIRST = 1 << 40 if fetch_all else 256
        GATE[0] = 0
        return ImageFolderLMDB(path, transform)
    return make


def no_stream_arrival_order(path, transform):
    dataset = ImageFolderLMDB(path, transform, prefetch=False)
    dataset.arrival_order = True  # normally on only beside a stream
    return dataset


RUNS = {  # the CSV beside this file: its variants, run beside lmdbio, prefetch=False and LitData
    "sched-idle": {"lmdbio": streamed(),
                   "stream at SCHED_IDLE, 256 KiB reads": streamed(True, 256 << 10),
                   "stream at SCHED_IDLE, 1 MiB reads, 1 stream": streamed(True, 1 << 20, 1)},
    "sched-idle-fetch-all": {"lmdbio": streamed(), "idle 256KiB": streamed(True, 256 << 10),
                             "idle 256KiB fetch all": streamed(True, 256 << 10,
                                                               fetch_all=True)},
    "gated": {"lmdbio": streamed(), "idle 256KiB": streamed(True, 256 << 10),
              "idle 256KiB gated": streamed(True, 256 << 10, gate=True),
              "gated": streamed(gate=True)},
    "no-stream-arrival-order": {"prefetch=False, arrival order": no_stream_arrival_order},
}
_conditions = perf_startup._conditions


def main(argv):
    run = argv[argv.index("--run") + 1]
    rest = argv[:argv.index("--run")] + argv[argv.index("--run") + 2:]
    variants = RUNS[run]

    def conditions(storage, files, spec):
        chosen = []
        for name, evict, factory in _conditions(storage, files, spec):
            if name == "lmdbio":
                path, transform = storage.path(files["lmdb"]), seed_transform()
                chosen += [(variant, evict, lambda make=make: make(path, transform))
                           for variant, make in variants.items()]
            if name in ("LitData", "lmdbio, prefetch=False") or (
                    name == "lmdbio" and name not in variants):
                chosen.append((name, evict, factory))
        return chosen

    perf_startup._conditions = conditions
    perf_startup.STRATEGIES = (*dict.fromkeys(["lmdbio", *variants]), "lmdbio, prefetch=False",
                               "LitData")
    perf_startup.CEILING = "(not run)"
    storages = perf.storages

    @contextlib.contextmanager
    def sshfs_only(work, with_nfs):
        with storages(work, with_nfs) as places:
            yield places[1:]

    perf.storages = sshfs_only
    return perf.main(["--only", "startup", "--out", f"/tmp/startup-schedules/{run}", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
