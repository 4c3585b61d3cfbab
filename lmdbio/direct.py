"""Records read with ``pread`` and asked of storage ahead, by their place in the file.

Why: with readahead off (what ``readahead="auto"`` picks for a database larger than the page
cache), a record read through LMDB's map costs one synchronous 4 KiB read per page: py-lmdb
touches every page of a value before it returns it (its ``preload``), and under
``MADV_RANDOM`` each touch is its own request to storage, so a 30 KB JPEG is eight reads one
after another. One ``pread`` of the record's bytes is one request of the record's size. And
knowing where a batch's records lie lets the reader ask storage for all of them at once
(``posix_fadvise(WILLNEED)``, asynchronous), so a cold batch waits for its slowest read, not
for the sum of them. Where the records lie comes from ``lmdbio.btree`` (LMDB's own pages,
without touching the records).

Beside a prefetch on a network file system (records read through the map, readahead on), a
batch's records that the stream has not reached yet are instead read together, synchronously,
and only those (``DirectAccess.fetch``): each read through the map would otherwise wait in
turn behind the stream's requests (``lmdbio.fetch``), and a hint for every record of every
batch slowed the stream itself (README, target 1).

A ``RecordFile`` is one process's descriptor of one database file; it is opened in the
process that reads and is not shared across ``fork``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lmdb

from .btree import ValueLocator
from .fetch import Sink, read_all
from .forklock import ForkSafeLock
from .format import SAMPLES_DB, encode_key
from .lmdb_layout import HEADER_BYTES

__all__ = ["DirectAccess", "RecordFile", "open_direct"]

Span = tuple[int, int]  # (offset in the file, length)
_SINK_BUFFER = 1 << 20  # where the file system cannot splice: read through a 1 MiB buffer
_sink_lock = ForkSafeLock()  # one sink per file, also when two threads fetch at once


def _read_fully(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset``, fewer only at the end of the file (the record check
    then reports it): a network file system may return a large read in parts."""
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class RecordFile:
    """``pread`` and read-ahead hints on one database file, as long as its name still holds
    the file LMDB mapped (``identity``: ``(st_dev, st_ino)``); otherwise ``fd`` is None and
    the caller reads through the map, which still holds the file it opened."""

    def __init__(self, path: str, identity: tuple[int, int], page_size: int = 4096) -> None:
        self.path = path
        self.page_size = page_size
        self.pid = os.getpid()
        self.fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._sink: Sink | None = None  # for ``fetch``, made on its first use
        opened = os.fstat(self.fd)
        if (opened.st_dev, opened.st_ino) != identity:
            self.close()  # the name now holds another file than the one mapped: use the map

    def read(self, span: Span) -> bytes | None:
        """The bytes of ``span`` (None when the file is not ours to read: see the class)."""
        if self.fd is None:
            return None
        return _read_fully(self.fd, *span)

    def will_need(self, spans: Iterable[Span]) -> None:
        """Ask the kernel to read ``spans`` into the page cache now, in the background; spans
        a page or less apart become one request."""
        if self.fd is None:
            return
        ordered = sorted(spans)
        if not ordered:
            return
        start, end = ordered[0][0], sum(ordered[0])
        for offset, length in ordered[1:] + [(-1, 0)]:
            if 0 <= offset <= end + self.page_size:
                end = max(end, offset + length)
                continue
            os.posix_fadvise(self.fd, start, end - start, os.POSIX_FADV_WILLNEED)
            start, end = offset, offset + length

    def fetch(self, spans: Sequence[Span]) -> None:
        """Read ``spans`` into the page cache now, all at once, and return when they are there
        (``lmdbio.fetch``); failures are left to the reads that follow."""
        if self.fd is None or not spans:
            return
        with _sink_lock:
            if self._sink is None:
                self._sink = Sink(self.fd, _SINK_BUFFER)
            sink = self._sink
        read_all(sink, spans)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        sink, self._sink = self._sink, None
        if self.pid != os.getpid():
            return
        if sink is not None:
            sink.close()
        if fd is not None:
            os.close(fd)


def _with_header(span: Span) -> Span:
    """A value's span widened to the overflow page header before it (read and checked with
    the value: see ``ValueLocator.heads``)."""
    return span[0] - HEADER_BYTES, span[1] + HEADER_BYTES


class DirectAccess:
    """One process's direct access to one database file: where each record lies (a
    ``ValueLocator``, confirmed against liblmdb by the caller) and its ``RecordFile``."""

    def __init__(self, locator: ValueLocator, file: RecordFile) -> None:
        self.locator = locator
        self.file = file
        self._hinted: dict[bytes, Span] = {}  # the last batch's places, for its reads

    def read(self, key: bytes) -> memoryview | None:
        """The value under ``key`` with one ``pread`` (with its overflow page header, checked);
        None: read it through the map, where liblmdb says what is wrong."""
        span = self._hinted.pop(key, None) or self.locator.span(key)
        if span is None:
            return None
        data = self.file.read(_with_header(span))
        if data is None or not self.locator.heads(span, data):
            return None
        return memoryview(data)[HEADER_BYTES:]

    def range(self, first: bytes, last: bytes) -> Span | None:
        """From the value under ``first`` to the end of the value under ``last`` (records
        stored in key order lie between), found from the tree alone; None where either is
        not placed or they are out of order."""
        low, high = self.locator.span(first), self.locator.span(last)
        if low is None or high is None or low[0] >= high[0] + high[1]:
            return None
        return low[0], high[0] + high[1] - low[0]

    def will_need_range(self, first: bytes, last: bytes) -> None:
        """Ask storage for ``range(first, last)`` in one request. The leaf pages that place it
        are read first with ``pread``, which lets other threads run while it waits; a fault
        in the map (``ctypes.string_at``) would hold the interpreter's lock meanwhile."""
        page = self.file.page_size
        for leaf in {self.locator.leaf(first), self.locator.leaf(last)}:
            if leaf is not None:
                self.file.read((leaf * page, page))
        span = self.range(first, last)
        if span is not None:
            self.file.will_need([span])

    def will_need(self, keys: Iterable[bytes]) -> None:
        """Ask storage for the values under ``keys`` now, in the background (their places
        are kept for the reads that follow, until the next call)."""
        self._hinted = {key: span for key in keys
                        if (span := self.locator.span(key)) is not None}
        self.file.will_need(self._hinted.values())

    def fetch(self, keys: Iterable[bytes], resident: Callable[[int, int], bool]) -> bool:
        """Read into the page cache now what of the values under ``keys`` is not there
        (``resident(offset, length)`` says, without reading), all at once: first the leaf
        pages that place them, then the values (with their overflow page headers). True when
        everything was there already."""
        page = self.file.page_size
        wanted = set(keys)
        leaves = {leaf for key in wanted if (leaf := self.locator.leaf(key)) is not None}
        cold_leaves = [(n * page, page) for n in sorted(leaves) if not resident(n * page, page)]
        self.file.fetch(cold_leaves)
        values = [_with_header(span) for key in wanted
                  if (span := self.locator.span(key)) is not None]
        cold = [value for value in values if not resident(*value)]
        self.file.fetch(cold)
        return not cold_leaves and not cold

    def cached(self, keys: Sequence[bytes], resident: Callable[[int, int], bool]) -> list[bool]:
        """For each of ``keys``: whether its leaf page and its value are in the page cache
        (``resident(offset, length)`` says, without reading), so reading it waits for no
        storage. Asking reads branch pages only (a leaf is placed before it is looked into);
        True where the value is not placed, which is then read as it would be anyway."""
        page = self.file.page_size
        leaves: dict[int, bool] = {}
        answers = []
        for key in keys:
            leaf = self.locator.leaf(key)
            if leaf is not None and leaf not in leaves:
                leaves[leaf] = resident(leaf * page, page)
            if leaf is not None and not leaves[leaf]:
                answers.append(False)
                continue
            span = self.locator.span(key)
            answers.append(span is None or resident(*_with_header(span)))
        return answers

    def close(self) -> None:
        self.file.close()


def open_direct(env: lmdb.Environment, samples: Any, path: str, identity: tuple[int, int],
                map_base: int, num_samples: int,
                map_offset: Callable[[memoryview], int | None]) -> DirectAccess | None:
    """Direct access to the database file ``path`` that ``env`` has mapped at ``map_base``
    (``samples``: its samples database; ``map_offset``: a view into the map -> its offset in the
    file); None where the layout is not confirmed, the records are too small to be read apart
    from their leaves or the name holds another file: then the map reads, as liblmdb always
    can. ``OSError`` from opening the file is the caller's to judge."""
    page = env.stat()["psize"]
    file = RecordFile(path, identity, page)
    if file.fd is None:
        return None
    try:
        # pages past the end of the file are SIGBUS in the map: the meta page's count is
        # trusted only as far as the file's size agrees
        last_page = min(env.info()["last_pgno"], os.fstat(file.fd).st_size // page - 1)
        with env.begin() as txn:  # the main database: the samples database's record
            locator = ValueLocator.of_database(txn, SAMPLES_DB, map_base, page, last_page)
        if locator is not None and _confirms(env, samples, locator, num_samples, map_offset):
            return DirectAccess(locator, file)
    except lmdb.Error:
        pass
    file.close()
    return None


def _confirms(env: lmdb.Environment, samples: Any, locator: ValueLocator, num_samples: int,
              map_offset: Callable[[memoryview], int | None], tries: int = 64) -> bool:
    """The locator places a record where liblmdb's own view of it lies: the layout it reads
    is this file's (checked once per process, on the first of the first ``tries`` records
    stored on overflow pages; reads that record through the map)."""
    with env.begin(db=samples, buffers=True) as txn:
        for index in range(min(tries, num_samples)):
            key = encode_key(index)
            value = txn.get(key)
            if value is None:
                return False
            span = locator.span(key)
            if span is not None:
                return span == (map_offset(value), len(value))
    return False  # small records, kept in their leaves: nothing to read directly
