"""CRC-32 (the zlib/IEEE polynomial) of record payloads, with the fastest implementation here.

Why: every record read is checked (``verify_checksums``), and with the standard library's zlib
1.2 the check costs as much as the rest of the read: 9.7 us of a 16 us read of a 32 KB JPEG
from the page cache (3.4 GB/s). zlib-ng's folding CRC runs at 15 GB/s (2.2 us) and gives the
same values, so the format does not change. It is a dependency where it ships wheels; where it
is missing, the standard library computes the same numbers, only slower.

The implementation is chosen on the first call, so ``import lmdbio`` does not pay for
importing zlib-ng (it imports ``gzip``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

Buffer = bytes | bytearray | memoryview  # collections.abc.Buffer is Python 3.12+

__all__ = ["crc32", "implementation"]

_impl: Callable[[Buffer, int], int] | None = None


def _choose() -> Callable[[Buffer, int], int]:
    global _impl
    try:
        from zlib_ng.zlib_ng import crc32 as fast
    except ImportError:
        _impl = zlib.crc32
    else:
        _impl = fast
    return _impl


def crc32(data: Buffer, value: int = 0) -> int:
    """``zlib.crc32(data, value)``, computed by zlib-ng where it is installed."""
    return (_impl or _choose())(data, value)


def implementation() -> str:
    """Which module computes the checksums (``"zlib_ng"`` or ``"zlib"``), for reports."""
    return "zlib" if (_impl or _choose()) is zlib.crc32 else "zlib_ng"
