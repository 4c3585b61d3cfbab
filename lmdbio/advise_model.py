"""The arithmetic of ``lmdbio advise``: measured storage and CPU figures in, predicted images/s
out. No I/O here, so the model can be checked on hand-built inputs and the study can apply it
to every storage point of a sweep (``predict(measured, workers=..., step_s=...)``).

The model (docs/ADVISE.md has it with its reasoning), all rates in images/s:

* ImageFolder: a worker opens, reads and closes each file, then decodes it, one file after the
  other: ``workers / (t_file + t_decode)``, capped by ``cores x decode rate`` and by the
  storage's bandwidth (``bandwidth / mean file size``). ``t_file`` is the measured cold
  open + read-to-EOF + close, which holds both the per-file latency and size / bandwidth of a
  typical file.
* lmdbio, the database fits in memory (lmdbio's own rule, ``lmdbio.prefetch``): one prefetch
  thread reads the file front to back at the sequential bandwidth and the workers decode from
  the page cache: ``min(bandwidth / mean record size, cores x decode rate)``.
* lmdbio, it does not fit: readahead off (``readahead="auto"``), each record read with one
  request of its size (``lmdbio.direct``), and a batch's records asked for together before
  the first is decoded, so a worker's reads overlap its decoding:
  ``t_record = request latency + record / bandwidth``, ``workers / t_record``, with the same
  caps. ``BlockShuffleSampler`` (blocks of neighbours in one request each) is recommended only
  where those random reads, not decoding, would bound it.
* An accelerator step of ``step_s`` per batch caps every rate at ``batch_size / step_s``.

No constant here is fitted to a measurement; the one threshold (``WORTH_IT``) is a choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .lmdb_layout import overflow_pages_for
from .prefetch import FRACTION_OF_BUDGET

__all__ = ["CONVERT", "DECODE_BOUND", "DOES_NOT_FIT", "NOT_WORTH_IT", "PAGE_BYTES", "WORTH_IT",
           "Measured", "Prediction", "predict", "record_bytes", "seconds"]

# A speedup below this is not worth a conversion (a second copy of the data, a step in the
# pipeline): a choice, not a fit. The study's sweeps call differences under ~10 % noise.
WORTH_IT = 1.1

PAGE_BYTES = 4096   # LMDB's page (and the page cache's) on the platforms lmdbio supports
_NODE_MAX = 2040    # the largest LMDB node kept inside a leaf page; a larger value overflows
_RECORD_HEADER = 16  # lmdbio's record header before the image bytes (docs/FORMAT.md)
_KEY_BYTES = 8

# What recommendation holds, word for word (the CLI prints it; the study may group by it).
CONVERT = "convert"
NOT_WORTH_IT = "not worth it"
DOES_NOT_FIT = "the DB will not fit in memory: use lmdbio.BlockShuffleSampler"
DECODE_BOUND = "decode-bound: more workers, DraftDecoder, convert --max-size"

MOST_WORKERS = 4096     # DataLoader workers and batch sizes predicted for at most
MOST_BATCH = 1 << 24


def record_bytes(file_bytes: float) -> float:
    """Bytes one image of ``file_bytes`` takes in an lmdbio file: the value (16-byte header +
    the bytes) in whole overflow pages (16-byte page header) when it is larger than a leaf
    node may be, which is every photo; else a node in a shared leaf page."""
    value = _RECORD_HEADER + file_bytes
    node = 8 + _KEY_BYTES + value
    if node > _NODE_MAX:
        pages = overflow_pages_for(math.ceil(value), PAGE_BYTES)
        return pages * PAGE_BYTES + 8 + _KEY_BYTES + 8
    return node + 2


@dataclass(frozen=True)
class Measured:
    """What ``lmdbio.advise.measure`` found on one tree (or a hand-built stand-in).

    The first group is what the model reads; the rest says how each figure was obtained.
    Units are in the names: ``_ms`` milliseconds, ``_mb_s`` 10^6 bytes per second.
    """

    files: int                               # images in the listing
    mean_file_bytes: float
    file_latency_ms: float                   # median cold open + read to EOF + close
    seq_mb_s: float                          # sequential read bandwidth, cold
    random_read_ms: float                    # one cold read of ~random_read_bytes
    decode_per_core_images_per_s: float      # decode (+ transform) on one core
    cores: float                             # CPUs this process may use (affinity, quota)
    mem_available_bytes: int                 # MemAvailable capped by the cgroup's room
    dataset_bytes: int                       # bytes of every listed file
    draft_decode_per_core_images_per_s: float = 0.0  # the same with DraftDecoder; 0: unknown
    check_per_core_images_per_s: float = 0.0  # convert's default check="decode"; 0: unknown
    file_latency_p90_ms: float = 0.0
    warm_file_latency_ms: float = 0.0        # the same files again, from the page cache
    open_ms: float = 0.0                     # median of the open() part of file_latency
    random_read_bytes: int = 0               # the request size behind random_read_ms
    mean_record_bytes: float = 0.0           # in the database; 0: from mean_file_bytes
    stat_ms: float = 0.0                     # median stat() of a listed file
    listing_s: float = 0.0                   # listing the tree as ImageFolder does
    read_workers: int = 4                    # the converter's reading threads on this FS
    evicted: bool = True                     # the sample's pages were dropped before reading
    root: str = ""
    classes: int = 0
    fstype: str = ""
    network_fs: bool = False
    transform: str = "seed"                  # what decode_per_core includes
    draft_min_size: int = 64
    sample_files: int = 0                    # asked for
    measured_files: int = 0                  # behind file_latency_ms
    bandwidth_files: int = 0                 # behind seq_mb_s (read by read_workers threads)
    decoded_files: int = 0                   # behind the decode rates
    dataset_bytes_source: str = "stat"       # "stat" (every file) or "estimated"
    seq_source: str = ""
    seq_lower_bound: bool = False            # timed on small files, not on one large file
    random_read_source: str = "measured"     # "measured" (a large file) or "estimated"
    eviction: str = ""                       # what eviction did, or why it could not
    resident_fraction: float | None = None   # of the sample, after eviction (mincore)
    cpu_affinity: int = 0
    cpu_quota: float | None = None
    load_average: float | None = None        # 1-minute load average when measuring began
    bad_files: tuple[tuple[str, str], ...] = ()  # sampled files that do not decode
    budget_s: float = 0.0
    elapsed_s: float = 0.0
    stopped_early: bool = False              # the time budget ended a phase
    notes: tuple[str, ...] = ()

    @property
    def record_bytes(self) -> float:
        return self.mean_record_bytes or record_bytes(self.mean_file_bytes)

    @property
    def db_bytes(self) -> int:
        """The database's expected size: every record in its pages, plus ~64 bytes a record
        for its stored path and target and the B-tree's branch pages (600 and 300 JPEGs of
        18 and 70 KB converted here came within 1 % of this), plus a few pages of header."""
        return int(self.files * (self.record_bytes + 64) + (64 << 10))


@dataclass(frozen=True)
class Prediction:
    """images/s of a DataLoader with ``workers`` workers for each format, what bounds each, and
    the recommendation (one of ``CONVERT``, ``NOT_WORTH_IT``, ``DOES_NOT_FIT``,
    ``DECODE_BOUND``) with its reason. Cold = the first epoch after the cache was dropped, or
    every epoch when the data does not stay in memory; warm = later epochs when it does."""

    workers: int
    batch_size: int
    step_s: float
    imagefolder_images_per_s: float
    imagefolder_bound: str
    lmdb_images_per_s: float
    lmdb_bound: str
    lmdb_draft_images_per_s: float
    lmdb_draft_bound: str
    speedup: float
    draft_speedup: float
    # lmdbio when the sequential rate was only a lower bound (timed on small files, each a
    # request of its own) and it binds: the rate with bandwidth unbounded (decode/step caps);
    # equal to lmdb_images_per_s otherwise. The verdict then rests on both ends.
    lmdb_upper_images_per_s: float
    speedup_upper: float
    imagefolder_warm_images_per_s: float
    lmdb_warm_images_per_s: float
    speedup_warm: float
    fits_in_memory: bool                     # lmdbio would prefetch the DB (half the budget)
    # False: open the DB with prefetch=False. Where a step, not the loader, sets the pace of a
    # DB that fits on a network FS, the prefetch's stream would only delay each cold first batch
    open_with_prefetch: bool
    db_bytes: int
    block_shuffle_images_per_s: float | None  # when it does not fit: BlockShuffleSampler
    convert_s: float
    convert_images_per_s: float
    convert_bound: str
    threshold: float
    recommendation: str
    reason: str


def seconds(value: float) -> str:
    """A duration as people read it: ``0.42 s``, ``12 s``, ``3.5 min``, ``2.1 h``."""
    if value < 10:
        return f"{value:.2g} s"
    if value < 600:
        return f"{value:.0f} s"
    return f"{value / 60:.1f} min" if value < 36_000 else f"{value / 3600:.1f} h"


def _bounded(terms: dict[str, float]) -> tuple[float, str]:
    """The smallest of the named rates and its name: the bottleneck."""
    name = min(terms, key=lambda key: terms[key])
    return terms[name], name


def _in_turn(reading: str, t_read: float, t_decode: float, decoding: str = "decode") -> str:
    """The name of a "read, then decode, in each worker" bound: whichever of the two takes
    longer, so a worker that spends 1 % of its time reading is not said to be bound by it
    (with workers <= cores this term always binds, however small the read is)."""
    return reading if t_read >= t_decode else f"{decoding} (reads in turn)"


def _stepped(rate: tuple[float, str], batch_size: int, step_s: float,
             workers: int) -> tuple[float, str]:
    """The loader's rate under an accelerator step of ``step_s`` per batch. With workers the
    two overlap (the loader prefetches), so the slower one sets the pace; without (loading in
    the main process) they take turns."""
    if step_s <= 0:
        return rate
    if workers == 0:
        return batch_size / (batch_size / rate[0] + step_s), "loading + step, in turn"
    return _bounded({rate[1]: rate[0], "accelerator step": batch_size / step_s})


def check_options(workers: int, batch_size: int, step_s: float,
                  threshold: float = WORTH_IT) -> None:
    """``ValueError`` for options no DataLoader has (the bounds keep the arithmetic in floats:
    a 400-digit worker count overflowed it)."""
    if not (0 <= workers <= MOST_WORKERS and 1 <= batch_size <= MOST_BATCH and step_s >= 0
            and threshold > 0):
        raise ValueError(f"need 0 <= workers <= {MOST_WORKERS}, 1 <= batch_size <= {MOST_BATCH}"
                         f", step_s >= 0 and threshold > 0, not {workers}, {batch_size}, "
                         f"{step_s}, {threshold}")


def predict(measured: Measured, *, workers: int, batch_size: int = 128, step_s: float = 0.0,
            threshold: float = WORTH_IT) -> Prediction:
    """Predict images/s of a DataLoader(``workers``, ``batch_size``) over ``measured``'s tree
    as ImageFolder and as lmdbio (defaults, and with ``DraftDecoder``), the conversion time and
    a recommendation. ``step_s``: an accelerator step per batch (0: loading alone)."""
    check_options(workers, batch_size, step_s, threshold)
    m = measured
    for name in ("mean_file_bytes", "file_latency_ms", "seq_mb_s", "decode_per_core_images_per_s",
                 "cores"):
        if not getattr(m, name) > 0:
            raise ValueError(f"measured.{name} must be > 0, not {getattr(m, name)!r}")
    in_flight = max(1, workers)              # workers=0: the main process, one at a time
    cpu_slots = min(in_flight, m.cores)      # decoding runs in the workers, at most one a core
    bandwidth = m.seq_mb_s * 1e6
    t_file = m.file_latency_ms / 1e3
    t_decode = 1 / m.decode_per_core_images_per_s
    t_draft = 1 / (m.draft_decode_per_core_images_per_s or m.decode_per_core_images_per_s)
    record = m.record_bytes
    db_bytes = m.db_bytes
    room = FRACTION_OF_BUDGET * m.mem_available_bytes  # lmdbio prefetches within this
    fits = db_bytes <= room

    def step(rate: tuple[float, str]) -> tuple[float, str]:
        return _stepped(rate, batch_size, step_s, workers)

    imagefolder = step(_bounded({_in_turn("per-file latency", t_file, t_decode):
                                 in_flight / (t_file + t_decode),
                                 "bandwidth": bandwidth / m.mean_file_bytes,
                                 "decode": cpu_slots / t_decode}))

    # Not fitting: each record is one request of its size (pread), a batch's records asked
    # for together, so a worker's reads overlap its decoding rather than alternate with it.
    # The request's latency is the measured random read less its own transfer.
    request_bytes = m.random_read_bytes or record
    latency = max(0.0, m.random_read_ms / 1e3 - request_bytes / bandwidth)
    t_record = latency + record / bandwidth

    def lmdb(t_dec: float) -> tuple[float, str]:
        terms = {"prefetch bandwidth" if fits else "bandwidth": bandwidth / record,
                 "decode": cpu_slots / t_dec}
        if not fits:
            terms["random reads"] = in_flight / t_record
        return step(_bounded(terms))

    lmdb_default, lmdb_draft = lmdb(t_decode), lmdb(t_draft)
    block = None
    if not fits:  # blocks of neighbours, each asked for in one request: sequential-like
        block = step(_bounded({"bandwidth": bandwidth / record, "decode": cpu_slots / t_decode}))

    # Warm epochs: the files (or the DB) stay in the page cache when they fit; ImageFolder
    # still opens every file (a round trip on a network FS), LMDB decodes from memory.
    if m.dataset_bytes <= room and m.warm_file_latency_ms > 0:
        t_warm = m.warm_file_latency_ms / 1e3
        if_warm = step(_bounded({_in_turn("per-file latency", t_warm, t_decode):
                                 in_flight / (t_warm + t_decode),
                                 "decode": cpu_slots / t_decode}))[0]
    else:
        if_warm = imagefolder[0]
    lmdb_warm = step((cpu_slots / t_decode, "decode"))[0] if fits else lmdb_default[0]

    # Conversion: read_workers threads read a file each, then run the validating check on it
    # (check="decode"); the one writer appends. Listing and a stat of every file come first.
    t_check = 1 / (m.check_per_core_images_per_s or m.decode_per_core_images_per_s)
    threads = max(1, m.read_workers)
    convert_rate = _bounded({_in_turn("per-file latency", t_file, t_check, "decode check"):
                             threads / (t_file + t_check),
                             "bandwidth": bandwidth / m.mean_file_bytes,
                             "decode check": min(threads, m.cores) / t_check})
    convert_s = (m.listing_s + m.files * (m.stat_ms / 1e3) / threads
                 + m.files / convert_rate[0])

    speedup = lmdb_default[0] / imagefolder[0]
    draft_speedup = lmdb_draft[0] / imagefolder[0]
    upper = lmdb_default[0]
    unknown_bandwidth = m.seq_lower_bound and "bandwidth" in lmdb_default[1]
    if unknown_bandwidth:
        upper = step((cpu_slots / t_decode, "decode"))[0]
    recommendation, reason = _recommend(m, imagefolder, lmdb_default, lmdb_draft, block,
                                        fits, db_bytes, workers, threshold, convert_s,
                                        upper if unknown_bandwidth else None)
    if unknown_bandwidth:
        reason += (f"; lmdbio's {lmdb_default[0]:.0f} images/s is a lower bound: the "
                   "sequential rate was timed on small files (each still a request of its "
                   f"own), and one stream of large reads is usually faster; decoding caps it "
                   f"at {upper:.0f} ({upper / imagefolder[0]:.2f}x)")
    # The prefetch's stream pays off where the loader sets the pace (no later batch waits for
    # storage); where a slower step does, the loader is ahead anyway and a network FS's reads
    # cost CPU on the same cores, taken from the first batch, which the step never makes up
    # (README, "When a slower step sets the pace"). Only the caller knows the step: ask it.
    open_with_prefetch = not (fits and m.network_fs and lmdb_default[1] == "accelerator step")
    if not open_with_prefetch:
        reason += ("; the accelerator step sets the pace, and on this network FS lmdbio's "
                   "prefetch (on by default for a DB that fits in memory) would take the cores "
                   "from each cold epoch's first batch: "
                   f"{'open' if recommendation == CONVERT else 'converted anyway, open'} it "
                   "with ImageFolderLMDB(path, prefetch=False), whose batches ask storage for "
                   "their records together")
    return Prediction(
        workers=workers, batch_size=batch_size, step_s=step_s,
        imagefolder_images_per_s=imagefolder[0], imagefolder_bound=imagefolder[1],
        lmdb_images_per_s=lmdb_default[0], lmdb_bound=lmdb_default[1],
        lmdb_draft_images_per_s=lmdb_draft[0], lmdb_draft_bound=lmdb_draft[1],
        speedup=speedup, draft_speedup=draft_speedup,
        lmdb_upper_images_per_s=upper, speedup_upper=upper / imagefolder[0],
        imagefolder_warm_images_per_s=if_warm, lmdb_warm_images_per_s=lmdb_warm,
        speedup_warm=lmdb_warm / if_warm, fits_in_memory=fits,
        open_with_prefetch=open_with_prefetch, db_bytes=db_bytes,
        block_shuffle_images_per_s=block[0] if block else None,
        convert_s=convert_s, convert_images_per_s=convert_rate[0],
        convert_bound=convert_rate[1], threshold=threshold,
        recommendation=recommendation, reason=reason)


def _recommend(m: Measured, imagefolder: tuple[float, str], lmdb: tuple[float, str],
               draft: tuple[float, str], block: tuple[float, str] | None, fits: bool,
               db_bytes: int, workers: int, threshold: float,
               convert_s: float, upper: float | None = None) -> tuple[str, str]:
    """The verdict and one sentence why, from the predicted rates. ``upper``: lmdbio's rate
    when its bandwidth bound is only a lower bound (see ``Prediction``)."""
    # what a user of lmdbio can reach: BlockShuffleSampler only where the random reads, not
    # decoding, bound the default order (it gives up part of the shuffle's randomness)
    blocks_help = block is not None and block[0] >= threshold * lmdb[0]
    best = block if blocks_help and block is not None else lmdb
    gain = best[0] / imagefolder[0]
    if upper is not None and gain < threshold <= upper / imagefolder[0]:
        # IOPS-bound storage (an HDD, a throttled volume) times small files at its request
        # rate, which says nothing of one stream of large reads: "not worth it" would rest on
        # a figure known to be low, so the verdict says what would decide it
        return CONVERT, (
            f"lmdbio reads between {lmdb[0]:.0f} and {upper:.0f} images/s against "
            f"ImageFolder's {imagefolder[0]:.0f} ({gain:.2f}x-{upper / imagefolder[0]:.2f}x): "
            "where the storage streams one large file faster than it serves small files "
            f"(as disks and most network storage do) converting pays off; check with "
            f"'dd if=LARGE_FILE of=/dev/null bs=1M' that it reads faster than "
            f"{m.seq_mb_s:.1f} MB/s; converting takes at least ~{seconds(convert_s)}")
    too_big = (f"the DB (~{db_bytes / 1e9:.2f} GB) is more than half of the "
               f"{m.mem_available_bytes / 1e9:.2f} GB of memory available, so lmdbio will not "
               f"prefetch it and reads each record with one request, a batch's together")
    if gain >= threshold and blocks_help:
        assert block is not None
        return DOES_NOT_FIT, (
            f"{too_big} ({lmdb[0]:.0f} images/s, {lmdb[0] / imagefolder[0]:.2f}x ImageFolder, "
            f"bound by {lmdb[1]}); lmdbio.BlockShuffleSampler(dataset) reads blocks of "
            f"neighbouring records in one request each: up to {block[0]:.0f} images/s "
            f"({gain:.2f}x ImageFolder's {imagefolder[0]:.0f}, bound by {block[1]}); "
            f"converting takes at least ~{seconds(convert_s)}")
    if gain >= threshold:
        more = ""
        if draft[0] >= threshold * lmdb[0]:
            more = (f"; with decode=lmdbio.DraftDecoder({m.draft_min_size}) "
                    f"{draft[0]:.0f} images/s ({draft[0] / imagefolder[0]:.2f}x)")
        return CONVERT, (
            f"lmdbio reads {lmdb[0]:.0f} images/s against ImageFolder's {imagefolder[0]:.0f} "
            f"({gain:.2f}x, at least the {threshold:g}x threshold; ImageFolder is bound by "
            f"{imagefolder[1]}, lmdbio by {lmdb[1]}){more}"
            f"{'' if fits else '; ' + too_big + ', in any order'}; converting takes at "
            f"least ~{seconds(convert_s)}")
    if imagefolder[1].startswith("decode") or lmdb[1].startswith("decode"):
        cores = f"{m.cores:g}"
        hints = []
        if workers < m.cores:
            hints.append(f"more workers (you asked for {workers}, this process may use "
                         f"{cores} cores)")
        hints.append(f"decode=lmdbio.DraftDecoder({m.draft_min_size}) after converting "
                     f"({draft[0]:.0f} images/s, {draft[0] / imagefolder[0]:.2f}x)")
        hints.append("'lmdbio convert --max-size N' to store smaller images")
        return DECODE_BOUND, (
            f"decoding is the bottleneck: {imagefolder[0]:.0f} images/s with ImageFolder, "
            f"{lmdb[0]:.0f} with lmdbio ({gain:.2f}x, under the {threshold:g}x threshold); "
            f"faster: {'; '.join(hints)}")
    return NOT_WORTH_IT, (
        f"ImageFolder already reaches {imagefolder[0]:.0f} images/s here (bound by "
        f"{imagefolder[1]}); lmdbio would reach {best[0]:.0f} ({gain:.2f}x, under the "
        f"{threshold:g}x threshold)")
