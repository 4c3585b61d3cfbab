"""Where a value lies in an LMDB file, found by reading LMDB's B-tree pages in the map.

Why: to read a record with one ``pread``, or to ask storage for a batch of records at once,
lmdbio needs each record's offset before reading it. liblmdb only tells that by positioning a
cursor on the record, and liblmdb 0.9.3x then reads the first page of the value (``mdb_node_read``
checks its overflow page header): one synchronous 4 KiB read per cold record, a round trip
on a network file system, before the record itself is asked for. Walking the branch and leaf
pages here touches only those pages (~50 leaves per 8 000 JPEG records, 0.7 % of the file),
which stay in the page cache after the first use.

The layout is LMDB 0.9's (``lmdb_layout``, shared with ``verify``'s structural check).

Everything read is checked: each page's own number and kind, node offsets inside the page, the
key found is the key asked, the value inside the file. Anything else answers ``None`` and the
caller reads through liblmdb as before; ``Database`` also confirms the layout once per process
against liblmdb's own answer for one record.
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
from typing import Any

from .forklock import ForkSafeLock
from .lmdb_layout import (DB_RECORD, F_BIGDATA, HEADER_BYTES, LITTLE_ENDIAN, NODE, PAGE, PGNO,
                          P_BRANCH, P_LEAF, P_OVERFLOW, child_page, overflow_header,
                          overflow_pages_for)

__all__ = ["ValueLocator"]

_BRANCHES_KEPT = 256  # branch pages parsed and kept (~12 KB each): every branch of a tree of
#                       ~7 M records; beyond that the rest are parsed when walked
_LEAVES_KEPT = 64  # leaf pages this process keeps, of all its databases (4 KiB each; the
#                    oldest dropped first): reading the leaf out of the map again was a third
#                    of a record's lookup. A shuffle buffer of 1024 records drawn from blocks
#                    of 128 reads a leaf for 4 % of its records with 64 kept, 45 % with 16
_leaves: dict[tuple[int, int], _Page] = {}  # (locator, leaf page number) -> the page
_leaves_lock = ForkSafeLock()  # a reader thread and the hint thread share them
_locators = itertools.count()  # a number per locator: an id() could be reused by another


class ValueLocator:
    """Finds ``(offset in the file, length)`` of values on overflow pages of one named database
    of one mapped, unchanging LMDB file, touching only its branch and leaf pages.

    Made in the process that reads (the map's address is that process's); ``map_base`` is the
    address of the file's map, ``last_page`` the last page number in the file: the caller takes
    it from the file's size as well as from LMDB's meta page, since a page of the map beyond
    the end of a (truncated) file is SIGBUS when read."""

    def __init__(self, map_base: int, page_size: int, root: int, depth: int,
                 last_page: int) -> None:
        self.map_base = map_base
        self.page_size = page_size
        self.root = root
        self.depth = depth
        self.last_page = last_page
        # branch pages, parsed once: (keys, child page numbers); every lookup walks them
        self._branches: dict[int, tuple[list[bytes], list[int]]] = {}
        self._number = next(_locators)

    @classmethod
    def of_database(cls, txn: Any, name: bytes, map_base: int, page_size: int,
                    last_page: int) -> ValueLocator | None:
        """The locator of database ``name`` (its record read from the main database through
        ``txn``, a transaction on the main database); None if the record does not parse."""
        record = txn.get(name)
        if not LITTLE_ENDIAN or record is None or len(record) != DB_RECORD.size:
            return None  # (the layout read is little-endian: elsewhere the map reads)
        _, _, depth, *_, root = DB_RECORD.unpack(bytes(record))
        if not 1 <= depth <= 64 or not 2 <= root <= last_page:  # pages 0 and 1: the meta pages
            return None
        return cls(map_base, page_size, root, depth, last_page)

    def span(self, key: bytes) -> tuple[int, int] | None:
        """Where the value under ``key`` lies; None when the key is absent, its value is kept
        in its leaf, or anything read does not check out."""
        leaf = self.leaf(key)
        if leaf is None:
            return None
        page = _leaves.get((self._number, leaf))
        if page is None:
            page = self._page(leaf, P_LEAF)
            if page is None:
                return None
            with _leaves_lock:
                while len(_leaves) >= _LEAVES_KEPT:
                    del _leaves[next(iter(_leaves))]
                _leaves[self._number, leaf] = page
        return self._value(page, key)

    def leaf(self, key: bytes) -> int | None:
        """The number of the leaf page that holds ``key`` if any does, found through the
        branch pages alone (None if one does not check out): a reader can have the leaves
        of a batch read together before it looks into them."""
        page_number = self.root
        for _ in range(self.depth - 1):
            branch = self._branch(page_number)
            if branch is None:
                return None
            keys, children = branch
            page_number = children[bisect.bisect_right(keys, key, 1) - 1]
        return page_number

    def _branch(self, number: int) -> tuple[list[bytes], list[int]] | None:
        """A branch page's node keys and child page numbers, parsed once (every lookup walks
        the same few); None if it does not check out."""
        branch = self._branches.get(number)
        if branch is None:
            page = self._page(number, P_BRANCH)
            branch = None if page is None else _branch(page)
            if branch is not None and len(self._branches) < _BRANCHES_KEPT:
                self._branches[number] = branch
        return branch

    def _page(self, number: int, kind: int) -> _Page | None:
        if not 2 <= number <= self.last_page:
            return None  # never read outside the file
        data = ctypes.string_at(self.map_base + number * self.page_size, self.page_size)
        own, _, flags, lower, upper = PAGE.unpack_from(data)
        if (own != number or not flags & kind or (lower - HEADER_BYTES) % 2
                or not HEADER_BYTES <= lower <= upper <= len(data)):
            return None
        return _Page(data, memoryview(data)[HEADER_BYTES:lower].cast("H"), upper)

    def _value(self, page: _Page, key: bytes) -> tuple[int, int] | None:
        high = len(page.nodes)
        if page.first is not None and len(key) == len(page.first):
            # lmdbio's keys are consecutive integers: a leaf holding keys first..first+n-1
            # has ``key`` at node key - first. One look instead of a search; checked.
            guess = int.from_bytes(key, "big") - page.first_number
            if 0 <= guess < high:
                span = self._overflow(page, guess, key)
                if span is not None:
                    return span
        low = 0
        while low < high:
            middle = (low + high) // 2
            found = page.key(middle)
            if found is None:
                return None
            if found < key:
                low = middle + 1
            elif found > key:
                high = middle
            else:
                return self._overflow(page, middle, key)
        return None

    def _overflow(self, page: _Page, index: int, key: bytes) -> tuple[int, int] | None:
        """Where the value of node ``index`` lies, if that node holds ``key`` and its value on
        overflow pages inside the file (one unpack of the node: this runs for every record)."""
        node, data = page.nodes[index], page.data
        if not page.upper <= node <= len(data) - NODE.size:
            return None
        lo, hi, flags, key_size = NODE.unpack_from(data, node)
        start = node + NODE.size + key_size
        if (not flags & F_BIGDATA or start + PGNO.size > len(data)
                or data[start - key_size:start] != key):
            return None
        (first,) = PGNO.unpack_from(data, start)
        length = lo | hi << 16
        pages = overflow_pages_for(length, self.page_size)
        if not 2 <= first or first + pages - 1 > self.last_page:
            return None
        return first * self.page_size + HEADER_BYTES, length

    def heads(self, span: tuple[int, int], read: bytes) -> bool:
        """Whether ``read``, the bytes read from the file from 16 bytes before ``span``, starts
        with the header of the overflow run that holds it (as liblmdb checks before it returns
        a value): a leaf node pointing into another record's pages is caught here, since a
        record's checksum does not cover where it was found."""
        if len(read) < HEADER_BYTES:
            return False
        own, flags, pages = overflow_header(read)
        return (own == (span[0] - HEADER_BYTES) // self.page_size and bool(flags & P_OVERFLOW)
                and pages >= overflow_pages_for(span[1], self.page_size))


class _Page:
    """One branch or leaf page: its bytes, node offsets and where its nodes begin; and its
    first key, as bytes and as a number (None when the page has no node or it does not
    check out)."""

    __slots__ = ("data", "first", "first_number", "nodes", "upper")

    def __init__(self, data: bytes, nodes: memoryview, upper: int) -> None:
        self.data, self.nodes, self.upper = data, nodes, upper
        self.first = self.key(0) if len(nodes) else None
        self.first_number = int.from_bytes(self.first or b"", "big")

    def key(self, index: int) -> bytes | None:
        """Node ``index``'s key; None if the node lies outside the page's node area."""
        node = self.nodes[index]
        if not self.upper <= node <= len(self.data) - NODE.size:
            return None
        start = node + NODE.size
        end = start + NODE.unpack_from(self.data, node)[3]
        return self.data[start:end] if end <= len(self.data) else None


def _branch(page: _Page) -> tuple[list[bytes], list[int]] | None:
    """A branch page's node keys and child page numbers (node 0's key, empty, stands for
    everything below node 1's); None if a node does not check out."""
    keys, children = [], []
    for index, node in enumerate(page.nodes):
        key = page.key(index)
        if key is None:
            return None
        keys.append(key)
        children.append(child_page(*NODE.unpack_from(page.data, node)[:3]))
    if not keys or keys[1:] != sorted(keys[1:]):
        return None
    return keys, children

