"""LMDB 0.9's on-disk page layout, the parts lmdbio reads itself (``mdb.c``): written once for
``lmdbcheck`` (``verify``'s crash-free walk of the whole B-tree with ``pread``) and ``btree``
(where a record lies, read from the pages in the map). Little-endian, 64-bit page numbers:
the layout of the files lmdbio writes on the machines it runs on.

A page starts with ``pgno, pad, flags, lower, upper`` (16 bytes) and ``(lower - 16) / 2``
16-bit offsets of its nodes, which lie in ``[upper, page size)``. A node is ``lo, hi, flags,
ksize`` (8 bytes), the key, then the data: in a branch page the child page number is
``lo | hi << 16 | flags << 32`` and node 0's key is empty (everything below node 1's); in a
leaf, ``lo | hi << 16`` is the data size, and a value on overflow pages (``F_BIGDATA``) is an
8-byte page number whose page holds the value one header in. A named database's root and
depth are in its 48-byte ``MDB_db`` record, stored in the main database under its name.
"""

from __future__ import annotations

import struct
import sys

__all__ = ["DB_RECORD", "F_BIGDATA", "F_DUPDATA", "F_SUBDATA", "HEADER_BYTES", "INVALID_PAGE",
           "LITTLE_ENDIAN", "META_DBS", "NODE", "NODE_BYTES", "PAGE", "PGNO", "P_BRANCH",
           "P_LEAF", "P_LEAF2", "P_META", "P_OVERFLOW", "child_page", "overflow_header",
           "overflow_pages_for"]

PAGE = struct.Struct("<QHHHH")       # pgno, pad, flags, lower, upper (overflow: page count)
DB_RECORD = struct.Struct("<IHHQQQQQ")  # MDB_db: pad (FREE_DBI: page size), flags, depth,
#                                         branch, leaf and overflow pages, entries, root
NODE = struct.Struct("<HHHH")        # lo, hi, flags, key size
PGNO = struct.Struct("<Q")
HEADER_BYTES, NODE_BYTES, META_DBS = 16, 8, 40  # META_DBS: the meta page's two MDB_db records
P_BRANCH, P_LEAF, P_OVERFLOW, P_META, P_LEAF2 = 0x01, 0x02, 0x04, 0x08, 0x20
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
INVALID_PAGE = (1 << 64) - 1         # P_INVALID: an empty database's root
LITTLE_ENDIAN = sys.byteorder == "little"  # the map is read in place: the host's order


def child_page(lo: int, hi: int, flags: int) -> int:
    """A branch node's child page number."""
    return lo | hi << 16 | flags << 32


def overflow_header(page: bytes) -> tuple[int, int, int]:
    """The first page of an overflow run: its own page number, its flags and the run's page
    count (kept where other pages keep ``lower, upper``)."""
    own, _, flags, lower, upper = PAGE.unpack_from(page)
    return own, flags, lower | upper << 16


def overflow_pages_for(size: int, page_size: int) -> int:
    """Pages of the overflow run that holds a value of ``size`` bytes (one page header in)."""
    return -(-(HEADER_BYTES + size) // page_size)
