"""What one record's read costs the CPU, by the way it is read, for a DB 4x the page cache.

Why: with data larger than memory, a per-sample uniform shuffle makes every record its own
request to storage, while a chunked format (LitData, WebDataset) reads its chunks in order.
Issue #17 asks lmdbio to lead those peers there; at the sweep's "data 4x the page cache" point
all of them are bound by the two cores, so what decides is the CPU a record's read costs. This
section measures that cost for the ways a reader can make the request, each in a v1 memory
cgroup at 1/4 of the DB (cold, one process, CPU of all its threads from ``getrusage``):

  random order, one request per record (what a uniform shuffle has to do):
    lmdbio           ``Database`` with readahead off, each batch of 64 hinted
                     (``will_need_records``) and read: what ``ImageFolderLMDB`` does there
    pread+hint       the same requests without lmdbio: ``posix_fadvise(WILLNEED)`` per record
                     for the batch, then ``pread`` each (the kernel's share alone)
    pread+hint+drop  and ``POSIX_FADV_DONTNEED`` after each read: the page cache gives the
                     pages back at once instead of reclaiming them at the cgroup's limit
    O_DIRECT         one synchronous ``pread`` per record past the page cache (none to fill,
                     none to reclaim)
    O_DIRECT+aio     the batch's 64 reads submitted in one ``io_submit`` (kernel AIO), past
                     the page cache: the fewest system calls a batch can cost
  block order (``BlockShuffleSampler``, 64 neighbouring records per request):
    lmdbio           the sampler's block hints through ``Database.will_need`` (its hint
                     thread's CPU included), then each record read
    pread+hint       each block hinted whole (``WILLNEED``) four blocks ahead, its records read
                     with ``pread`` in a shuffled order (the kernel's share alone)
    pread+hint+drop  and the block's pages dropped (``DONTNEED``) once its records are read
    O_DIRECT         each block read in one ``pread`` past the page cache, records copied out
  file order:
    sequential       ``pread`` each record in turn, kernel readahead on: what a reader of
                     chunks in order pays per record

Run: ``python -m lmdbio.study.bench perf --only iocost`` (``results/perf/iocost.csv``).
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import platform
import random
import resource
import struct
import time
from collections.abc import Callable, Sequence

from lmdbio import Database, EnvOptions
from lmdbio.samplers import BlockShuffleSampler
from lmdbio.study import cgroups
from lmdbio.study.bench.perf_common import MB, Storage, banner
from lmdbio.study.bench.perf_reads import child_main, run_in_cgroup

CHILD = "lmdbio.study.bench.perf_iocost"
BATCH = 64   # records per DataLoader batch (the sweep's batch size) and per block
PAGE = 4096  # O_DIRECT alignment: a page covers every logical block size in use
Span = tuple[int, int]
METHODS = ("random: lmdbio", "random: pread+hint", "random: pread+hint+drop",
           "random: O_DIRECT", "random: O_DIRECT+aio", "block: lmdbio", "block: pread+hint",
           "block: pread+hint+drop", "block: O_DIRECT",
           "sequential")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _aligned(span: Span) -> Span:
    """The whole pages around ``span``: what an O_DIRECT read of it asks for."""
    start = span[0] // PAGE * PAGE
    return start, -(-(span[0] + span[1]) // PAGE) * PAGE - start


class _KernelAio:
    """Linux AIO through raw system calls (no libaio needed): a batch of O_DIRECT reads into
    one page-aligned buffer, submitted in one call, waited for together."""

    CALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}  # setup, destroy,
    IOCB = struct.Struct("QIiHhIQQqQII")                               # getevents, submit

    def __init__(self, slots: int, buffer_bytes: int) -> None:
        self.setup, self.destroy, self.getevents, self.submit = self.CALLS[platform.machine()]
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long
        self.context = ctypes.c_ulong(0)
        self._check(self.libc.syscall(self.setup, slots, ctypes.byref(self.context)), "io_setup")
        self.iocbs = ctypes.create_string_buffer(self.IOCB.size * slots)
        self.pointers = (ctypes.c_uint64 * slots)(
            *(ctypes.addressof(self.iocbs) + self.IOCB.size * i for i in range(slots)))
        self.events = ctypes.create_string_buffer(32 * slots)
        self.buffer = mmap.mmap(-1, buffer_bytes)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))

    def _check(self, result: int, call: str) -> int:
        if result < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"{call}: {os.strerror(error)}")
        return result

    EVENT = struct.Struct("QQqq")  # data (the slot), iocb, result, second result

    def read(self, fd: int, spans: Sequence[Span]) -> list[bytes]:
        """The bytes of each of ``spans`` (at most as many as the slots), read together."""
        places, needed, used = [], [], 0
        for slot, span in enumerate(spans):
            start, length = _aligned(span)
            if used + length > len(self.buffer):
                raise ValueError(f"{len(spans)} records need more than the "
                                 f"{len(self.buffer)}-byte buffer")
            self.IOCB.pack_into(self.iocbs, self.IOCB.size * slot, slot, 0, 0, 0, 0, fd,
                                self.address + used, length, start, 0, 0, 0)
            places.append(used + span[0] - start)
            needed.append(span[0] - start + span[1])  # a read may stop short at the file's end
            used += length
        submitted = self._check(self.libc.syscall(self.submit, self.context, len(spans),
                                                  self.pointers), "io_submit")
        if submitted != len(spans):
            raise OSError(f"io_submit queued {submitted} of {len(spans)} reads")
        done = 0
        while done < len(spans):
            got = self.libc.syscall(self.getevents, self.context, 1, len(spans) - done,
                                    self.events, None)
            if got < 0 and ctypes.get_errno() == 4:  # EINTR
                continue
            for event in range(self._check(got, "io_getevents")):
                slot, _, result, _ = self.EVENT.unpack_from(self.events, self.EVENT.size * event)
                if result < needed[slot]:
                    raise OSError(f"AIO read of {spans[slot]} returned {result}")
            done += got
        view = memoryview(self.buffer)
        return [bytes(view[at:at + length]) for at, (_, length) in zip(places, spans)]

    def close(self) -> None:
        self.libc.syscall(self.destroy, self.context)
        self.buffer.close()


def aio_refused() -> str | None:
    """Why kernel AIO cannot be used here (no system call numbers for this machine, or the
    kernel or a sandbox refuses ``io_setup``); None when it can."""
    if platform.machine() not in _KernelAio.CALLS:
        return f"no AIO system call numbers for {platform.machine()}"
    try:
        _KernelAio(1, PAGE).close()
    except OSError as exc:
        return str(exc)
    return None


def _batches(order: Sequence[int]) -> list[Sequence[int]]:
    return [order[start:start + BATCH] for start in range(0, len(order), BATCH)]


def _direct_read(fd: int, span: Span, buffer: mmap.mmap) -> bytes:
    start, length = _aligned(span)
    if length > len(buffer):
        raise ValueError(f"{span} does not fit the {len(buffer)}-byte buffer")
    if os.preadv(fd, [memoryview(buffer)[:length]], start) < span[0] - start + span[1]:
        raise OSError(f"O_DIRECT read of {span} came back short")
    return bytes(memoryview(buffer)[span[0] - start:span[0] - start + span[1]])


def _reader(method: str, path: str, spans: list[Span],
            shuffled: list[int]) -> Callable[[], int]:
    """A function that reads the records the ``method`` way and returns how many it read."""
    def lmdbio_random() -> int:
        with Database(path, EnvOptions(readahead=False)) as db:
            for batch in _batches(shuffled):
                db.will_need_records(batch)
                for index in batch:
                    db.get(index)
        return len(shuffled)

    def lmdbio_block() -> int:
        with Database(path, EnvOptions(readahead=False)) as db:
            for index in BlockShuffleSampler(db, block_size=BATCH, seed=1):
                db.get(index)
        return len(spans)

    # blocks of neighbours in one shuffled order, each with its byte range in the file
    blocks = _batches(range(len(spans)))
    random.Random(1).shuffle(blocks)
    ranges = [(spans[b[0]][0], sum(spans[b[-1]]) - spans[b[0]][0]) for b in blocks]
    buffer = mmap.mmap(-1, 16 << 20)  # page-aligned, larger than any block of 64 records

    def opened(flags: int, read: Callable[[int], None]) -> Callable[[], int]:
        """A reader of every record: ``read`` on the file opened with ``flags``."""
        def run() -> int:
            fd = os.open(path, os.O_RDONLY | flags)
            try:
                read(fd)
            finally:
                os.close(fd)
            return len(spans)
        return run

    def hinted(drop: bool) -> Callable[[int], None]:
        def read(fd: int) -> None:
            for batch in _batches(shuffled):
                for index in sorted(batch, key=spans.__getitem__):
                    os.posix_fadvise(fd, *spans[index], os.POSIX_FADV_WILLNEED)
                for index in batch:
                    os.pread(fd, spans[index][1], spans[index][0])
                    if drop:
                        os.posix_fadvise(fd, *spans[index], os.POSIX_FADV_DONTNEED)
        return read

    def direct_random(fd: int) -> None:
        for index in shuffled:
            _direct_read(fd, spans[index], buffer)

    def direct_aio(fd: int) -> None:
        aio = _KernelAio(BATCH, 16 << 20)
        try:
            for batch in _batches(shuffled):
                aio.read(fd, [spans[index] for index in batch])
        finally:
            aio.close()

    def direct_block(fd: int) -> None:
        for block, (start, length) in zip(blocks, ranges):
            data = memoryview(_direct_read(fd, (start, length), buffer))
            for index in random.sample(list(block), len(block)):
                bytes(data[spans[index][0] - start:sum(spans[index]) - start])

    def block_hinted(drop: bool) -> Callable[[int], None]:
        def read(fd: int) -> None:
            for ahead in range(min(4, len(blocks))):
                os.posix_fadvise(fd, *ranges[ahead], os.POSIX_FADV_WILLNEED)
            for number, block in enumerate(blocks):
                if number + 4 < len(blocks):
                    os.posix_fadvise(fd, *ranges[number + 4], os.POSIX_FADV_WILLNEED)
                for index in random.sample(list(block), len(block)):
                    os.pread(fd, spans[index][1], spans[index][0])
                if drop:
                    os.posix_fadvise(fd, *ranges[number], os.POSIX_FADV_DONTNEED)
        return read

    def sequential(fd: int) -> None:
        for offset, length in spans:
            os.pread(fd, length, offset)

    readers: dict[str, Callable[[], int]] = {
        "random: lmdbio": lmdbio_random, "block: lmdbio": lmdbio_block,
        "random: pread+hint": opened(0, hinted(False)),
        "random: pread+hint+drop": opened(0, hinted(True)),
        "random: O_DIRECT": opened(os.O_DIRECT, direct_random),
        "random: O_DIRECT+aio": opened(os.O_DIRECT, direct_aio),
        "block: pread+hint": opened(0, block_hinted(False)),
        "block: pread+hint+drop": opened(0, block_hinted(True)),
        "block: O_DIRECT": opened(os.O_DIRECT, direct_block),
        "sequential": opened(0, sequential)}
    return readers[method]


def _child(argv: list[str]) -> None:
    """In the cgroup: one method over the whole DB; prints one JSON line."""
    path, method = argv
    with Database(path) as db:
        spans = [db.byte_range(index, index + 1) for index in range(len(db))]
    if any(span is None for span in spans):
        raise SystemExit(f"{path}: records are not placed in the file (too small?)")
    shuffled = list(range(len(spans)))
    random.Random(1).shuffle(shuffled)
    read = _reader(method, path, spans, shuffled)  # type: ignore[arg-type]
    cpu, wall = _cpu_s(), time.perf_counter()
    records = read()
    cpu, wall = _cpu_s() - cpu, time.perf_counter() - wall
    print(json.dumps({"records": records, "cpu_us_per_record": cpu / records * 1e6,
                      "wall_us_per_record": wall / records * 1e6}))


def bench_io_cost(storage: Storage, raw: str, repeats: int) -> list[dict]:
    """Each method cold in its own cgroup at 1/4 of the DB, in ABBA order over ``repeats``."""
    ok, why = cgroups.available("memory")
    if not ok:
        print(f"iocost skipped: {why}", flush=True)
        return []
    db = f"{raw}.lmdb"
    path = storage.path(db)
    size = os.path.getsize(path)
    limit = size // 4
    refused = aio_refused()
    methods = [m for m in METHODS if "aio" not in m or refused is None]
    if refused is not None:
        print(f"   kernel AIO left out: {refused}", flush=True)
    banner(f"[{storage.name}] I/O cost per record: DB {size / MB:.0f} MB, page cache bounded to "
           f"{limit / MB:.0f} MB (v1 memory cgroup), one process", {})
    rows = []
    for repeat in range(repeats):
        for method in methods if repeat % 2 == 0 else methods[::-1]:
            storage.evict(db)
            row = run_in_cgroup(limit, [path, method], CHILD)
            rows.append({"storage": storage.name, "method": method, "repeat": repeat,
                         "cgroup_limit_mb": limit / MB, "db_mb": size / MB, **row})
            print(f"   {method:24} {row['cpu_us_per_record']:6.1f} us CPU per record, "
                  f"{row['wall_us_per_record']:6.1f} us wall", flush=True)
    return rows


if __name__ == "__main__":
    child_main(CHILD, _child, "DB METHOD", "iocost")
