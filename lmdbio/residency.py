"""How much of an open file is in the page cache: ``mincore(2)`` over a read-only shared map.

A PROT_READ map that is never touched faults nothing in, so looking does not change what is
seen. libc is reached through ctypes (loaded on first use: ``import lmdbio`` stays light) rather
than Python's mmap module, because mincore needs the map's raw address. Used by ``lmdbio
advise`` (is the sample cold?), by the study's page-cache control and, over the map LMDB already
holds, by a reader deciding which records of a batch to read ahead (``map_resident``).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["map_resident", "resident_bytes"]

_PAGE = os.sysconf("SC_PAGE_SIZE")
_WINDOW = 1 << 30   # map at most this much at a time: a 100 GB file needs no 100 GB of address
_LOW_BIT = bytes(i & 1 for i in range(256))
_libc: Any = None


def _load() -> Any:
    global _libc
    if _libc is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)  # the process's own libc: no ldconfig run
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.restype = ctypes.c_int
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        _libc = libc
    return _libc


def resident_bytes(fd: int, size: int) -> int:
    """Bytes of the first ``size`` bytes of ``fd`` in the page cache (the last page counted
    only for its part of the file). ``OSError`` (its errno, and "mmap" or "mincore" as the
    message) when the file cannot be mapped or asked (some FUSE file systems, ``direct_io``)."""
    import ctypes

    libc = _load()
    failed = ctypes.c_void_p(-1).value
    resident = 0
    for offset in range(0, max(size, 0), _WINDOW):
        length = min(_WINDOW, size - offset)
        pages = -(-length // _PAGE)
        addr = libc.mmap(None, length, 1, 1, fd, offset)  # PROT_READ, MAP_SHARED
        if addr in (None, failed):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            flags = _page_flags(addr, length)
            if flags is None:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            libc.munmap(addr, length)
        resident += flags.count(1) * _PAGE
        if offset + length == size and flags[-1]:
            resident -= pages * _PAGE - length
    return resident


def map_resident(address: int, length: int) -> bool:
    """Whether every page of ``length`` bytes at ``address``, inside a file mapping this process
    already holds, is in the page cache (asking touches nothing). True also when the kernel
    cannot say (the range is not mapped): the caller then reads as it would have anyway."""
    if length <= 0:
        return True
    flags = _page_flags(address, length)
    return flags is None or flags.count(1) == len(flags)


def _page_flags(address: int, length: int) -> bytes | None:
    """One byte per page of the mapped range ``[address, address + length)`` (``address``
    rounded down to its page): 1 if the page is in the page cache, else 0; None when
    ``mincore`` fails (its errno left for ``ctypes.get_errno``)."""
    import ctypes

    start = address - address % _PAGE
    pages = -(-(address + length - start) // _PAGE)
    vector = ctypes.create_string_buffer(pages)
    if _load().mincore(ctypes.c_void_p(start), pages * _PAGE, vector) != 0:
        return None
    return vector.raw[:pages].translate(_LOW_BIT)
