"""The measuring half of ``lmdbio advise``: what this storage and these CPUs deliver, on a
bounded sample of the user's own ImageFolder tree, within a time budget.

Order matters, and is the one docs/ADVISE.md gives: the tree is listed first exactly as
ImageFolder lists it (``lmdbio.folder``: no ``stat`` per file, so a network FS's attribute
cache is in the state a real ImageFolder run sees); then each sampled file is opened once: the
open is timed, its pages are dropped from the page cache (``posix_fadvise(DONTNEED)``, checked
with ``mincore``), and its read and close are timed, cold (the reads: ``lmdbio.advise_reads``). Nothing is ever written: files are
opened read-only, and the only state changed is the page cache (pages dropped, then read
back).

Stdlib + Pillow (+ numpy through Pillow); torch and torchvision only for ``transform="seed"``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import random
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .advise_model import Measured, record_bytes
from .advise_reads import (Eviction, Timed, evict_one, random_reads, read_stream, stat_rest,
                           threaded_reads, timed_read)
from .decode import DraftDecoder, decode_pil
from .errors import MissingDependencyError, SourceError
from .folder import find_classes, make_dataset
from .paths import absolute_path
from .prefetch import memory_budget
from .sources import default_read_workers
from .system import cores_available, fs_info, is_network_fs
from .validate import check_payload

__all__ = ["DRAFT_MIN_SIZE", "TRANSFORMS", "measure"]

TRANSFORMS = ("seed", "none")
DRAFT_MIN_SIZE = 64          # the seed transform's crop: DraftDecoder's fastest setting for it
LARGE_FILE_BYTES = 64 << 20  # a file this large holds many records' worth of random offsets
SEQ_READ_MAX = 256 << 20     # read at most this much of a large file for the bandwidth
KEEP_FOR_DECODE = 64 << 20   # sampled bytes kept in memory for the decode timings
WARM_FILES = 50
DECODE_MAX = 200             # images per decode timing (enough for a stable median rate)
RESIDENT_OK = 0.05           # "evicted" when at most this share of the sample stays cached
_NO_EVICTION_FS = frozenset({"tmpfs", "ramfs", "devtmpfs"})  # the pages are the storage

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# -- decoding -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seed_transform() -> Iterator[Callable[[Any], Any]]:
    """The seed's training transform (RandomResizedCrop(64), flip, ToTensor, ImageNet
    Normalize), torch on one thread as in a DataLoader worker; the caller's torch RNG and
    thread count are restored afterwards (the study calls this in its own process)."""
    import torch
    from torchvision import transforms

    pipeline = transforms.Compose([
        transforms.RandomResizedCrop(DRAFT_MIN_SIZE),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            yield pipeline
    finally:
        torch.set_num_threads(threads)


def _rate(work: Callable[[bytes], Any], images: Sequence[tuple[str, bytes]],
          deadline: float) -> tuple[float, list[tuple[str, bytes]], list[tuple[str, str]]]:
    """``(images per CPU-second, the images that worked, those that raised and why)`` for
    ``work`` on ``images``, at most DECODE_MAX, until ``deadline`` (but at least one that
    works). CPU seconds of this thread: one core's rate, whatever else the machine runs. The
    first image that works warms up (plugin loading, lazy initialisation) and is not timed."""
    good: list[tuple[str, bytes]] = []
    bad: list[tuple[str, str]] = []
    done, spent = 0, 0.0
    for path, data in images:
        if len(good) > DECODE_MAX or (done and time.perf_counter() > deadline):
            break
        t0 = time.thread_time()
        try:
            work(data)
        except Exception as exc:  # noqa: BLE001 - hostile input makes Pillow raise anything
            bad.append((path, str(exc).split(" <_io.")[0].strip() or type(exc).__name__))
            continue
        seconds = time.thread_time() - t0
        if good:  # not the warm-up
            spent += seconds
            done += 1
        good.append((path, data))
    if good and not done:  # only the warm-up ran: time that image once more
        t0 = time.thread_time()
        work(good[0][1])
        spent, done = time.thread_time() - t0, 1
    return done / max(spent, 1e-9), good, bad


# -- measure --------------------------------------------------------------------------------------


class _Clock:
    """The budget: each phase may use ``share`` of what is left when it starts, so phases
    that finish early leave their time to the later ones."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.end = self.start + budget_s
        self.cut: list[str] = []

    def phase(self, share: float) -> float:
        now = time.perf_counter()
        return now + max(0.0, self.end - now) * share

    def over(self, name: str, done: int, planned: int) -> None:
        if done < planned:
            self.cut.append(f"{name}: {done} of {planned}")


def measure(root: str | os.PathLike[str], *, sample: int = 300, budget_s: float = 60.0,
            transform: str = "seed", evict: bool = True, seed: int = 0,
            allow_empty: bool = False, progress: Progress | None = None) -> Measured:
    """Measure what ``root`` (an ImageFolder tree) and this machine deliver: see the module
    docstring and docs/ADVISE.md. ``sample`` files at most, ``budget_s`` seconds in all (the
    listing included; a phase that runs out of time stops and says how many it measured).
    ``transform``: ``"seed"`` (decode + the seed transform; imports torchvision) or ``"none"``
    (decode only). ``evict=False`` measures the cache as it is (warm figures). Raises
    ``SourceError`` / ``SourceFileError`` for what is not a readable ImageFolder tree."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(map(repr, TRANSFORMS))}, not "
                         f"{transform!r}")
    if sample < 1 or not budget_s > 0:
        raise ValueError(f"sample must be >= 1 and budget_s > 0, not {sample}, {budget_s}")
    missing = [name for name in ("torch", "torchvision")
               if transform == "seed" and importlib.util.find_spec(name) is None]
    if missing:  # before a minute of measuring, not after it
        raise MissingDependencyError(
            f"transform 'seed' needs {' and '.join(missing)}, not installed here; install them "
            "(pip install torch torchvision) or measure the decode alone: --transform none "
            "(transform='none')")
    say = progress or _quiet
    clock = _Clock(budget_s)
    try:
        load: float | None = os.getloadavg()[0]
    except OSError:
        load = None
    given = os.path.expanduser(os.fspath(root))
    notes: list[str] = []

    say(f"listing {given} as ImageFolder does")
    t0 = time.perf_counter()
    classes, class_to_idx = find_classes(given)
    listed = [path for path, _ in make_dataset(given, class_to_idx, allow_empty=allow_empty)]
    listing_s = time.perf_counter() - t0
    if not listed:
        raise SourceError(f"found no image file in {given!r} (its class folders hold none "
                          "with ImageFolder's extensions); pass the split folder that holds "
                          "the images, e.g. data/train")
    try:
        fstype = fs_info(given).fstype
    except OSError:
        fstype = ""
    network = bool(fstype) and is_network_fs(fstype)
    read_workers = default_read_workers(given)

    rng = random.Random(seed)
    chosen = [listed[i] for i in rng.sample(range(len(listed)), min(sample, len(listed)))]
    cache = Eviction(evict)
    n_bandwidth = len(chosen) // 3 if len(chosen) >= 3 else 0
    bandwidth_set, latency_set = chosen[:n_bandwidth], chosen[n_bandwidth:]

    # (i) the cold per-file latency, one at a time in the (random) sampled order; each file's
    # pages are dropped between its open and its read
    say(f"reading {len(latency_set)} sampled files cold, one at a time"
        + ("" if evict else " (not evicted)"))
    deadline = clock.phase(0.4)
    timed: list[Timed] = []
    kept = 0
    for path in latency_set:
        if timed and time.perf_counter() > deadline:
            break
        item = timed_read(path, cache, KEEP_FOR_DECODE - kept)
        kept += len(item.data or b"")
        timed.append(item)
    clock.over("per-file reads", len(timed), len(latency_set))
    totals = sorted(item.total_s for item in timed)
    sizes = {item.path: item.size for item in timed}

    # (ii) the converter's pattern, the other sampled files by its threads: a lower bound of
    # the sequential bandwidth, its read rate, and more bytes to decode
    streamed: list[Timed] = []
    threaded_mb_s = 0.0
    if bandwidth_set:
        say(f"reading {len(bandwidth_set)} other sampled files with {read_workers} threads")
        deadline = clock.phase(0.25)
        rate, streamed = threaded_reads(bandwidth_set, read_workers, deadline, cache,
                                        max(0, KEEP_FOR_DECODE - kept) // len(bandwidth_set))
        clock.over("threaded reads", len(streamed), len(bandwidth_set))
        sizes.update((item.path, item.size) for item in streamed)
        threaded_mb_s = rate / 1e6

    # (iii) random reads, then (ii) one sequential stream, where the sample has a large file
    large = max(sizes, key=lambda path: sizes[path])
    large = large if sizes[large] >= LARGE_FILE_BYTES else ""
    others = [size for path, size in sizes.items() if path != large] or [sizes[large]]
    request = int(record_bytes(statistics.mean(others)))
    random_times: list[float] = []
    if large:
        say(f"random reads of {request} bytes in {large}")
        random_times = random_reads(large, sizes[large], request, clock.phase(0.1), rng)
        say(f"reading {large} front to back")
        evict_one(large)
        t0 = time.perf_counter()
        got = read_stream(large, clock.phase(0.25), SEQ_READ_MAX)
        seq_mb_s = got / (time.perf_counter() - t0) / 1e6
        seq_source = f"one large file ({got / 1e6:.0f} MB of {sizes[large] / 1e6:.0f} MB)"
    elif streamed:
        seq_mb_s = threaded_mb_s
        seq_source = (f"{len(streamed)} sampled files read by {read_workers} threads at once "
                      "(a lower bound of one large file's sequential rate)")
    else:
        got = sum(item.size for item in timed)
        seconds = sum(item.read_s for item in timed)
        seq_mb_s = got / seconds / 1e6 if seconds > 0 else 0.0
        seq_source = "the per-file reads' bytes over their read time (a lower bound)"
    seq_mb_s = max(seq_mb_s, 1e-3)
    evicted, eviction, resident_fraction = _judge_eviction(evict, cache, fstype, network)

    if random_times:
        random_read_ms = statistics.median(random_times) * 1e3
        random_source, random_bytes = f"measured ({len(random_times)} reads)", request
    else:  # a small file's read to EOF is one request of about a record: the same cost
        random_read_ms = statistics.median(item.read_s for item in timed) * 1e3
        random_source = ("estimated: the read part of the per-file time (per-file latency "
                         "less open and close); no large file to read at random")
        random_bytes = int(statistics.median(item.size for item in timed))

    # warm: the same files again, now from the page cache
    say("reading some of them again, warm")
    deadline = clock.phase(0.1)
    warm: list[float] = []
    for item in timed[:WARM_FILES]:
        if warm and time.perf_counter() > deadline:
            break
        warm.append(timed_read(item.path, None, 0).total_s)

    # (iv) decode rates on one core, on the bytes read in (i) and (ii)
    kept_images = [(item.path, item.data) for item in timed + streamed
                   if item.data is not None]
    if not kept_images:  # every sampled image is larger than KEEP_FOR_DECODE: take one anyway
        smallest = min(timed, key=lambda item: item.size)
        with open(smallest.path, "rb") as handle:
            kept_images = [(smallest.path, handle.read())]
    say(f"decoding up to {min(len(kept_images), DECODE_MAX)} images on one core"
        + (" with the seed transform (imports torchvision)" if transform == "seed" else ""))
    draft = DraftDecoder(DRAFT_MIN_SIZE)
    with contextlib.ExitStack() as stack:
        # Pillow's warnings (DecompressionBombWarning, libtiff's) would interleave with the
        # report on stderr; a file they concern is still timed, and convert reports them.
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        post: Callable[[Any], Any] = (stack.enter_context(_seed_transform())
                                      if transform == "seed" else (lambda image: image))
        decode_rate, images, bad = _rate(lambda data: post(decode_pil(data)), kept_images,
                                         clock.phase(0.33))
        if not images:
            path, why = bad[0]
            raise SourceError(f"no valid image file among the {len(kept_images)} sampled "
                              f"files of {given!r} (the first, {path!r}: {why}); pass a "
                              "folder of images ImageFolder can load")
        draft_rate = _rate(lambda data: post(draft(data)), images, clock.phase(0.5))[0]
        check_rate = _rate(lambda data: check_payload(data, "decode"), images,
                           clock.phase(0.5))[0]
    if bad:
        notes.append(f"{len(bad)} of the sampled files do not decode (the first, "
                     f"{bad[0][0]!r}: {bad[0][1]}): ImageFolder's loader raises on them and "
                     "lmdbio convert stops at them unless --on-error skip")

    # (vi) the dataset's size: stat the rest of the listing while the budget lasts
    known = dict(sizes)
    rest = [path for path in listed if path not in known]
    stat_times: list[float] = []
    if rest:
        say(f"stat of the other {len(rest)} files for the dataset's size")
        more, stat_times = stat_rest(rest, clock.end)
        known.update(more)
    if len(known) == len(listed):
        dataset_bytes, size_source = sum(known.values()), "stat"
    else:
        dataset_bytes = round(statistics.mean(known.values()) * len(listed))
        size_source = (f"estimated: the mean of {len(known)} files' sizes x {len(listed)} "
                       "files (the budget ended the stat of the rest)")
        clock.cut.append(f"dataset size: stat of {len(known)} of {len(listed)} files")
    mean_bytes = dataset_bytes / len(listed)
    mean_record = statistics.mean(record_bytes(size) for size in known.values())

    cores, affinity, quota = cores_available()
    if load is not None and load >= cores / 2:
        notes.append(f"the machine was busy (load average {load:.1f} on {cores:g} cores): "
                     "the predictions assume the cores are free for the DataLoader, so they "
                     "are higher than what a run beside this load gets")
    if clock.cut:
        notes.append("the time budget ended " + "; ".join(clock.cut))
    return Measured(
        files=len(listed), mean_file_bytes=mean_bytes,
        file_latency_ms=statistics.median(totals) * 1e3,
        seq_mb_s=seq_mb_s, random_read_ms=random_read_ms,
        decode_per_core_images_per_s=decode_rate, cores=cores,
        mem_available_bytes=memory_budget(), dataset_bytes=dataset_bytes,
        draft_decode_per_core_images_per_s=draft_rate, check_per_core_images_per_s=check_rate,
        file_latency_p90_ms=_quantile(totals, 0.9) * 1e3,
        warm_file_latency_ms=statistics.median(warm) * 1e3 if warm else 0.0,
        open_ms=statistics.median(item.open_s for item in timed) * 1e3,
        random_read_bytes=random_bytes, mean_record_bytes=mean_record,
        stat_ms=statistics.median(stat_times) * 1e3 if stat_times else 0.0,
        listing_s=listing_s, read_workers=read_workers, evicted=evicted,
        root=absolute_path(given), classes=len(classes), fstype=fstype,
        network_fs=network, transform=transform, draft_min_size=DRAFT_MIN_SIZE,
        sample_files=sample, measured_files=len(timed), bandwidth_files=len(streamed),
        decoded_files=len(images), dataset_bytes_source=size_source,
        seq_source=seq_source, seq_lower_bound=not large, random_read_source=random_source,
        eviction=eviction,
        resident_fraction=resident_fraction, cpu_affinity=affinity, cpu_quota=quota,
        load_average=load,
        bad_files=tuple(bad), budget_s=budget_s,
        elapsed_s=time.perf_counter() - clock.start, stopped_early=bool(clock.cut),
        notes=tuple(notes))


def _quantile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted values, nearest rank (no interpolation on few values)."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _judge_eviction(evict: bool, dropped: Eviction, fstype: str,
                    network: bool) -> tuple[bool, str, float | None]:
    """``(evicted, what it means, resident share)``: whether the figures are cold ones."""
    lower = "the latencies are then warm-cache figures: lower bounds of a cold epoch's"
    if not evict:
        return False, f"not evicted (evict=False): {lower}", None
    if fstype in _NO_EVICTION_FS:
        return False, (f"cannot evict on {fstype}: its pages are the storage itself, so "
                       "every read is a memory read (as it would be for ImageFolder there)"), None
    fraction = (dropped.resident / dropped.checked_bytes if dropped.checked_bytes else None)
    if dropped.refused and (fraction is None or fraction > RESIDENT_OK):
        return False, (f"{fstype or 'this file system'} refused to drop the pages of "
                       f"{dropped.refused} sampled files (posix_fadvise failed): {lower}"), fraction
    if fraction is None:
        return False, (f"asked the kernel to drop the sample's pages but could not check it "
                       f"(mincore failed on {dropped.unverifiable} files): {lower}"), None
    if fraction > RESIDENT_OK:
        return False, (f"{fraction:.1%} of the sample stayed in the page cache after "
                       f"eviction (mapped by another process?): {lower}"), fraction
    text = f"evicted and checked ({fraction:.1%} still resident)"
    if dropped.unverifiable:
        text += f"; {dropped.unverifiable} files could not be checked"
    if network:
        text += ("; on a network FS only this client's cache is dropped: the server's may "
                 "still hold the files")
    return True, text, fraction
