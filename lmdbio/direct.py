"""Records read with one ``pread`` each instead of page faults through LMDB's map.

Why: with readahead off (what ``readahead="auto"`` picks for a database larger than the page
cache), a record read through the map costs one synchronous 4 KiB read per page. py-lmdb
touches every page of a value before it returns it (its ``preload``: the faults then happen
with the GIL released), and under ``MADV_RANDOM`` each touch is its own request to storage, so
a 30 KB JPEG is eight reads one after another. One ``pread`` of the record's bytes is one
request of the record's size. Measured on this machine's disk, cold, random order, readahead
off: ~3 300 records/s through the map, ~6 000-7 400 with ``pread`` (README, "Performance").

How the record is found without touching it: py-lmdb's ``Cursor.key()`` returns a view of the
key inside its leaf page (the page LMDB's search has just read) and no value page is touched.
In LMDB's leaf node (``MDB_node``, liblmdb 0.9) the 8 bytes before the key hold the value's
size and flags; for a value on overflow pages (``F_BIGDATA``: any value over about a quarter
of a page, so every image) the bytes after the key hold its first page number, and the value
starts one page header into that page. Small values stay in their leaf and are read through
the map as before. The layout is checked once per process against the map (one record located
both ways); any mismatch, e.g. another liblmdb layout, turns direct reads off for that file.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from typing import Any

from .locality import buffer_address

__all__ = ["DirectReads", "value_span"]

_NODE_HEADER = struct.Struct("=HHHH")  # mn_lo, mn_hi (swapped on big-endian), mn_flags, mn_ksize
_PAGE_NUMBER = struct.Struct("@N")     # pgno_t is a size_t
_BIGDATA = 0x01                        # F_BIGDATA: the value lives on overflow pages
_PAGE_HEADER_BYTES = 16                # PAGEHDRSZ: where an overflow page's data begins
_BIG_ENDIAN = sys.byteorder == "big"


def value_span(cursor: Any, key: bytes, page_size: int) -> tuple[int, int] | None:
    """``(offset in the file, length)`` of the value stored under ``key`` on overflow pages,
    found from its leaf node without reading the value; None when ``key`` is absent or its
    value is stored inside the leaf. ``cursor`` is a py-lmdb cursor of a buffers=True
    transaction on the value's database."""
    if not cursor.set_key(key):
        return None
    stored_key = cursor.key()
    size = len(stored_key)
    node = ctypes.string_at(buffer_address(stored_key) - _NODE_HEADER.size,
                            _NODE_HEADER.size + size + _PAGE_NUMBER.size)
    low, high, flags, key_size = _NODE_HEADER.unpack_from(node)
    if not flags & _BIGDATA or key_size != size:
        return None
    if _BIG_ENDIAN:
        low, high = high, low
    (page,) = _PAGE_NUMBER.unpack_from(node, _NODE_HEADER.size + size)
    return page * page_size + _PAGE_HEADER_BYTES, low | high << 16


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


class DirectReads:
    """One process's descriptor of one database file, for reading values with ``pread``.

    ``read(txn, key)`` returns the value's bytes, or None when it cannot be read directly
    (absent key, value in its leaf, layout not confirmed, or the name now holding another file
    than ``identity``, the one LMDB mapped): the caller then reads it through the map. Opened
    in the process that reads; not shared across ``fork``.
    """

    def __init__(self, path: str, page_size: int, identity: tuple[int, int]) -> None:
        self.path = path
        self.page_size = page_size
        self.pid = os.getpid()
        self.fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.confirmed = False  # the layout has been checked against the map in this process
        opened = os.fstat(self.fd)
        if (opened.st_dev, opened.st_ino) != identity:
            self.close()  # the name now holds another file than the one mapped: use the map

    def read(self, txn: Any, key: bytes, map_offset: Any) -> bytes | None:
        """The value under ``key`` read with one ``pread``; ``map_offset(view)`` gives a map
        view's offset in the file (None when unknown), used for the one-time layout check."""
        if self.fd is None:
            return None
        span = value_span(txn.cursor(), key, self.page_size)
        if span is None:
            return None
        if not self.confirmed and not self._confirm(txn, key, span, map_offset):
            return None
        return _read_fully(self.fd, *span)

    def _confirm(self, txn: Any, key: bytes, span: tuple[int, int], map_offset: Any) -> bool:
        value = txn.get(key)
        if value is not None and map_offset(value) == span[0] and len(value) == span[1]:
            self.confirmed = True
            return True
        self.close()  # not the layout this module knows: read through the map from now on
        return False

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None and self.pid == os.getpid():
            os.close(fd)
