"""What ``convert`` checks before it stores a file (``check=``), and Pillow's warnings captured.

Three levels, from strongest to fastest:

* ``"full"``: exactly what ImageFolder's loader does (``Image.open``, which enforces the
  decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS``; a full decode; ``convert("RGB")``).
* ``"decode"`` (default): the same, except that a JPEG is decoded at 1/8 scale
  (``Image.draft``): libjpeg still parses every marker and entropy-decodes every coefficient of
  every scan, so a file that fails here fails ImageFolder's loader and vice versa (damaged
  Huffman data, truncation, 12-bit or unsupported variants, bombs), for ~1/4 of the cost of a
  full decode; only the inverse DCT and colour conversion run at 1/64 of the pixels. Every
  other format is decoded in full.
* ``"structure"``: the fast opt-out. JPEG/PNG pass when their headers are well formed and their
  end marker is in place (truncation, the commonest damage, is caught); other formats get
  Pillow's header parse. Guarantee: the file is a complete JPEG/PNG or an image Pillow
  identifies; it can still fail to decode (damaged entropy data, 12-bit JPEGs, unknown PNG
  compression, decompression bombs...).

Nothing here imports Pillow before a check needs it.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator
from typing import Literal

__all__ = ["CHECKS", "JPEG_START", "PNG_START", "Check", "capture_warnings", "check_image",
           "check_payload", "collecting_warnings"]

Check = Literal["decode", "full", "structure"]
CHECKS: tuple[str, ...] = ("decode", "full", "structure")

# The leading bytes of JPEG and PNG files, for every module that tells them apart (decode,
# tools): defined once, here, beside the structure checks that parse them.
JPEG_START, PNG_START = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
_JPEG_END = b"\xff\xd9"
_PNG_HEADER, _PNG_END = b"\x00\x00\x00\rIHDR", b"IEND\xaeB`\x82"
_JPEG_NOT_FRAMES = (0xC4, 0xC8, 0xCC)  # DHT, JPG, DAC share the 0xC? range with SOF markers


def _jpeg_headers_ok(data: bytes) -> bool:
    """Walk the marker segments from SOI to the start of scan: each well-formed, a frame
    header (SOF) among them. What Pillow's header parse checks, without its cost."""
    pos, seen_frame = 2, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the entropy-coded image follows
            return seen_frame
        if marker in (0xD8, 0xD9, 0x01) or 0xD0 <= marker <= 0xD7:
            return False  # no SOI, EOI, TEM or RST belongs before the scan
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2:
            return False
        seen_frame |= 0xC0 <= marker <= 0xCF and marker not in _JPEG_NOT_FRAMES
        pos += 2 + length
    return False


def _looks_complete(data: bytes) -> bool | None:
    """For JPEG and PNG (nearly every dataset): well-formed headers and the end marker in
    place? None for other formats. Costs microseconds where Pillow's header parse costs tens
    and holds the GIL, and unlike it catches the commonest damage, truncation."""
    if data.startswith(JPEG_START):
        return (_jpeg_headers_ok(data)
                and data[-64:].rstrip(b"\0").endswith(_JPEG_END))  # some writers pad zeros
    if data.startswith(PNG_START):
        return data[8:16] == _PNG_HEADER and data.endswith(_PNG_END)
    return None


def check_payload(data: bytes, check: Check = "decode") -> None:
    """Raise ``ValueError`` (with the reason) unless ``data`` passes ``check`` (see above)."""
    complete = _looks_complete(data) if check == "structure" else None
    if complete:
        return
    from PIL import Image  # ~50 ms, and only needed when converting

    try:
        with Image.open(io.BytesIO(data)) as image:  # the decompression-bomb check runs here
            if check == "structure":
                if complete is False:  # truncated or odd: a full decode decides
                    image.load()
                return
            if check == "decode" and image.format in ("JPEG", "MPO"):
                image.draft(None, (1, 1))  # 1/8 DCT scale; every coefficient still decoded
            image.load()
            if image.mode not in ("RGB", "L"):  # from these, convert("RGB") cannot fail
                image.convert("RGB")  # as torchvision's pil_loader
    except Image.UnidentifiedImageError:  # its message is the repr of our BytesIO: useless
        raise ValueError("cannot identify image file (empty, or not an image format Pillow "
                         "reads)") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{exc} (raise PIL.Image.MAX_IMAGE_PIXELS if you trust it)") from None
    except MemoryError:
        raise ValueError("decoding it needs more memory than there is") from None
    except Exception as exc:  # noqa: BLE001 - hostile input makes Pillow raise anything
        # (OSError, SyntaxError, ValueError, struct.error, EOFError...): ImageFolder's loader
        # would raise it too, so it is a reason to refuse, never a crash of the converter
        raise ValueError(str(exc).split(" <_io.")[0].strip() or type(exc).__name__) from None


def check_image(data: bytes, full_decode: bool) -> None:
    """``check_payload`` with ``"full"`` or ``"structure"`` (the interface before ``check=``)."""
    check_payload(data, "full" if full_decode else "structure")


_local = threading.local()


@contextlib.contextmanager
def collecting_warnings(into: list[str]) -> Iterator[None]:
    """In this thread, inside ``capture_warnings``: append each warning's text to ``into``."""
    previous = getattr(_local, "into", None)
    _local.into = into
    try:
        yield
    finally:
        _local.into = previous


@contextlib.contextmanager
def capture_warnings() -> Iterator[None]:
    """While converting: warnings that Pillow (and lmdbio) issue in a thread that is
    ``collecting_warnings`` (``DecompressionBombWarning``, libtiff's and the plugins'
    ``UserWarning`` s) go to that thread's list, one per file, instead of stderr; others are
    shown as before. Changes process-wide warning state for its duration, as
    ``warnings.catch_warnings`` does."""
    with warnings.catch_warnings():
        original = warnings.showwarning
        for module in (r"PIL(\..*)?$", r"lmdbio(\..*)?$"):
            warnings.filterwarnings("always", module=module)  # every file's own, not once

        def show(message, category, filename, lineno, file=None, line=None):  # type: ignore
            into = getattr(_local, "into", None)
            if into is None:
                return original(message, category, filename, lineno, file, line)
            into.append(f"{category.__name__}: {message}")
            return None

        warnings.showwarning = show
        yield
