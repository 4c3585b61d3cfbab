"""A structural check of an LMDB file that cannot crash: the B-tree walked with ``pread``.

liblmdb trusts its pages: a damaged node offset, key size, data size or child page number
makes it read past the page, and past the end of the file mapping, which kills the process
with SIGBUS or SIGSEGV instead of raising an error (found by tests/torture/test_reliability_fuzz.py).
Records carry their own CRC-32 (docs/FORMAT.md), but the B-tree around them does not. So
``lmdbio verify`` first walks every branch, leaf and overflow page of the file through
ordinary reads, checking what liblmdb would otherwise trust; only a file that passes is then
read through liblmdb. The format is LMDB 0.9's (``lmdb_layout``): 16-byte page headers, two
meta pages, 8-byte nodes; little-endian, 64-bit page numbers.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Collection

from .errors import FormatError, LmdbioError
from .format import data_file
from .lmdb_layout import (DB_RECORD as _DB, F_BIGDATA, F_DUPDATA, F_SUBDATA,
                          HEADER_BYTES as _HEADER, INVALID_PAGE as _INVALID,
                          META_DBS as _META_DBS, NODE as _NODE, NODE_BYTES as _NODE_SIZE,
                          P_BRANCH, P_LEAF, P_META, P_OVERFLOW, PAGE as _PAGE, PGNO,
                          child_page, overflow_header, overflow_pages_for)

__all__ = ["check_structure", "require_sound"]

_MAGIC, _VERSION = 0xBEEFC0DE, 1
_MAX_PROBLEMS = 20


class _Damaged(Exception):
    pass


class _Unsupported(Exception):
    """A layout lmdbio never writes (sorted duplicates, integer or reverse keys): not checked."""


class _Walker:
    def __init__(self, fd: int, psize: int, last_pgno: int,
                 skip: Collection[bytes] = ()) -> None:
        self.fd, self.psize, self.last = fd, psize, last_pgno
        self.skip = skip  # sub-databases whose trees are not walked
        self.seen = bytearray(last_pgno // 8 + 1)  # a bit per page: ~4 MB for 140 GB
        self.problems: list[str] = []

    def mark(self, pgno: int) -> bool:
        """Mark page ``pgno`` used; whether it was already."""
        byte, bit = divmod(pgno, 8)
        used = self.seen[byte] >> bit & 1
        self.seen[byte] |= 1 << bit
        return bool(used)

    def page(self, pgno: int, what: str) -> bytes:
        if not 2 <= pgno <= self.last:
            raise _Damaged(f"{what} points at page {pgno}, outside pages 2..{self.last}")
        if self.mark(pgno):
            raise _Damaged(f"{what} points at page {pgno}, which another reference uses")
        data = os.pread(self.fd, self.psize, pgno * self.psize)
        if len(data) != self.psize:
            raise _Damaged(f"page {pgno} lies beyond the end of the file")
        if _PAGE.unpack_from(data)[0] != pgno:
            raise _Damaged(f"page {pgno} is labelled page {_PAGE.unpack_from(data)[0]}")
        return data

    def tree(self, name: str, db: tuple[int, ...], keys: Collection[bytes] | None = None
             ) -> None:
        """Walk one database (``db`` = an unpacked MDB_db record) from its root; with
        ``keys``, only the pages a lookup of each of them reads (its counts unchecked)."""
        _, flags, depth, branches, leaves, overflows, entries, root = db
        if root == _INVALID:
            if entries:
                raise _Damaged(f"database {name}: no root page but {entries} entries")
            return
        if flags & ~0x7E:  # MDB_REVERSEKEY (0x02) ... MDB_REVERSEDUP (0x40)
            raise _Damaged(f"database {name}: unknown flags {flags:#x}")
        if flags:
            raise _Unsupported(name)
        counts = {"branch": 0, "leaf": 0, "overflow": 0, "entries": 0}
        stack = [(root, 1, None, None)]  # page, level, lowest key allowed, key to stay below
        while stack:
            pgno, level, low, high = stack.pop()
            if level > depth:
                raise _Damaged(f"database {name}: page {pgno} is deeper than its depth {depth}")
            page = self.page(pgno, f"database {name}")
            _, _, kind, lower, upper = _PAGE.unpack_from(page)
            if kind not in (P_BRANCH, P_LEAF):
                raise _Damaged(f"database {name}: page {pgno} has flags {kind:#x}, not a "
                               "branch or leaf page")
            if (kind == P_LEAF) != (level == depth):
                raise _Damaged(f"database {name}: page {pgno} at level {level} of {depth}")
            if not _HEADER <= lower <= upper <= self.psize or (lower - _HEADER) % 2:
                raise _Damaged(f"page {pgno}: bad bounds {lower}..{upper}")
            count = (lower - _HEADER) // 2
            if count == 0:
                raise _Damaged(f"page {pgno} holds {count} nodes")
            counts["branch" if kind == P_BRANCH else "leaf"] += 1
            children, previous = [], low
            for index, offset in enumerate(struct.unpack_from(f"<{count}H", page, _HEADER)):
                if not upper <= offset <= self.psize - _NODE_SIZE:
                    raise _Damaged(f"page {pgno}: node {index} at offset {offset}")
                lo, hi, nflags, ksize = _NODE.unpack_from(page, offset)
                key_end = offset + _NODE_SIZE + ksize
                if key_end > self.psize:
                    raise _Damaged(f"page {pgno}: node {index} key of {ksize} bytes overruns")
                key = page[offset + _NODE_SIZE:key_end]
                if kind == P_BRANCH and index == 0:
                    key = None  # a branch page's first key is implicit (the lowest)
                elif previous is not None and (key < previous or (key == previous and index)) \
                        or (high is not None and key >= high):
                    raise _Damaged(f"database {name}: page {pgno}: keys out of order")
                previous = key if key is not None else previous
                if kind == P_BRANCH:
                    children.append((child_page(lo, hi, nflags), key))
                    continue
                counts["entries"] += 1
                size = lo | hi << 16
                if nflags & ~(F_BIGDATA | F_SUBDATA) or nflags & F_DUPDATA:
                    raise _Damaged(f"page {pgno}: node {index} has flags {nflags:#x}")
                if nflags & F_BIGDATA:
                    if key_end + 8 > self.psize:
                        raise _Damaged(f"page {pgno}: node {index} overruns")
                    counts["overflow"] += self.overflow(
                        PGNO.unpack_from(page, key_end)[0], size, name)
                elif key_end + size > self.psize:
                    raise _Damaged(f"page {pgno}: node {index} data of {size} bytes overruns")
                elif nflags & F_SUBDATA:
                    if size != _DB.size:
                        raise _Damaged(f"page {pgno}: sub-database record of {size} bytes")
                    if key in self.skip:
                        continue
                    self.tree(key.decode("utf-8", "backslashreplace"),
                              _DB.unpack_from(page, key_end))
            wanted = None if keys is None or not children else {
                max(i for i, (_, key) in enumerate(children) if key is None or key <= k)
                for k in keys}  # the child whose range holds k
            for i, (child, key) in enumerate(children):
                if wanted is not None and i not in wanted:
                    continue
                bound_low = key if key is not None else low
                bound_high = children[i + 1][1] if i + 1 < len(children) else high
                stack.append((child, level + 1, bound_low, bound_high))
        expect = {"branch": branches, "leaf": leaves, "overflow": overflows, "entries": entries}
        if keys is None and counts != expect:
            raise _Damaged(f"database {name}: found {counts}, its record says {expect}")

    def overflow(self, pgno: int, size: int, name: str) -> int:
        page = self.page(pgno, f"a value of database {name}")
        _, kind, pages = overflow_header(page)
        if kind != P_OVERFLOW or pages < 1 or pgno + pages - 1 > self.last:
            raise _Damaged(f"overflow page {pgno}: flags {kind:#x}, {pages} pages")
        if overflow_pages_for(size, self.psize) > pages:
            raise _Damaged(f"a value of {size} bytes does not fit its {pages} overflow pages")
        for extra in range(pgno + 1, pgno + pages):
            if self.mark(extra):
                raise _Damaged(f"overflow pages {pgno}+{pages} overlap page {extra}")
        return pages


def _meta(fd: int, offset: int) -> tuple[int, int, tuple[int, ...], tuple[int, ...]] | None:
    data = os.pread(fd, _META_DBS + 2 * _DB.size + 16, offset)
    if len(data) < _META_DBS + 2 * _DB.size + 16:
        return None
    _, _, flags, _, _ = _PAGE.unpack_from(data)
    magic, version = struct.unpack_from("<II", data, _HEADER)
    if not flags & P_META or magic != _MAGIC or version != _VERSION:
        return None
    free = _DB.unpack_from(data, _META_DBS)
    main = _DB.unpack_from(data, _META_DBS + _DB.size)
    last, txnid = struct.unpack_from("<QQ", data, _META_DBS + 2 * _DB.size)
    return txnid, last, free, main


def check_structure(path: str | os.PathLike[str], *, skip: Collection[bytes] = (),
                    main_keys: Collection[bytes] | None = None) -> list[str]:
    """Problems in the B-tree of the LMDB file at ``path`` (empty: sound). A path that is not
    an LMDB file at all gives no problems here: opening it reports that, with its own message.

    ``skip``: named sub-databases whose trees are left out (their records in the main tree
    are checked). ``main_keys``: of the main tree, only the pages a lookup of these keys
    reads. ``skip=(SAMPLES_DB,), main_keys=(SAMPLES_DB, META_DB)`` is what opening a
    database reads through liblmdb: a few pages whatever its size."""
    path = os.fspath(path)
    try:  # O_NONBLOCK: a FIFO must not block here (envs.check_database_path refuses it)
        fd = os.open(data_file(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []  # not a database file: opening it reports that, in its own words
        first = _meta(fd, 0)
        if first is None:
            return []
        psize = first[2][0]
        if psize < 512 or psize & (psize - 1) or psize > 1 << 16:
            return [f"meta page 0 gives a page size of {psize}"]
        second = _meta(fd, psize)
        if second is None:
            return ["meta page 1 is damaged"]
        txnid, last, _, main = max(first, second)  # liblmdb reads the newer of the two
        size = os.fstat(fd).st_size
        if (last + 1) * psize > size:
            return [f"the file is truncated: {size} bytes, its pages end at {(last + 1) * psize}"]
        walker = _Walker(fd, psize, last, skip)
        try:
            walker.tree("(main)", main, main_keys)
        except _Damaged as exc:
            return [str(exc)]
        except _Unsupported:
            return []
        except (struct.error, OverflowError, RecursionError) as exc:
            return [f"unreadable structure ({exc})"]
        return []
    finally:
        os.close(fd)


def require_sound(path: str | os.PathLike[str], *, skip: Collection[bytes] = (),
                  main_keys: Collection[bytes] | None = None,
                  remedy: str = "re-convert the source or restore a copy",
                  error: type[LmdbioError] = FormatError) -> None:
    """``check_structure``'s first problem, if any, as the one-line ``error`` of a damaged
    file: called before liblmdb reads what it would otherwise trust."""
    problems = check_structure(path, skip=skip, main_keys=main_keys)
    if problems:
        raise error(f"{os.fspath(path)!r} is damaged (LMDB structure: {problems[0]}); {remedy}")
