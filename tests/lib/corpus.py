"""A corpus of odd and broken images, made by code at test time (nothing committed but this).

``build(root)`` writes an ImageFolder tree: class ``good`` holds files that torchvision's
``pil_loader`` loads (odd but valid: CMYK, 16-bit, palette with transparency, APNG, EXIF
orientation, progressive, TIFF, BMP, WebP...), class ``bad`` files it refuses. Each entry says
why it is there and what ``lmdbio.convert`` must do with it:

* ``reason``: a piece of the reason a default (``check="decode"``) conversion gives when it
  refuses the file (``None``: it is stored);
* ``structural``: whether ``check="structure"`` stores it (its guarantee: JPEG/PNG headers
  well formed and end marker in place, other formats identified by Pillow's header parse).

Decompression bombs are headers only: a 20 000 x 20 000 PNG and a 30 000 x 30 000 JPEG take a
few hundred bytes; no pixels are ever allocated (Pillow refuses them in ``Image.open``).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Entry:
    name: str            # file name, under good/ or bad/
    data: bytes
    reason: str | None   # a piece of the refusal reason (None: stored by default)
    structural: bool     # stored by check="structure"
    why: str


def _pixels(h: int = 24, w: int = 32, seed: int = 0, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w * h * channels).reshape(h, w, channels)
    return (base + rng.integers(0, 40, (h, w, channels))).clip(0, 255).astype(np.uint8)


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _rgb(seed: int = 0) -> Image.Image:
    return Image.fromarray(_pixels(seed=seed))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_header_only(width: int, height: int, *, compression: int = 0, depth: int = 8,
                    colour: int = 2, idat: bytes | None = None,
                    extra: bytes = b"") -> bytes:
    """A PNG of the given IHDR with a tiny IDAT: a header says anything, the pixels are never
    there."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, compression, 0, 0)
    body = zlib.compress(b"\0" * 16) if idat is None else idat
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", body)
            + _chunk(b"IEND", b""))


def jpeg_with_frame(width: int, height: int, *, sof: int = 0xC0, precision: int = 8) -> bytes:
    """A real small JPEG whose frame header (SOF) is rewritten: another size, another
    precision, another SOF type. Headers stay well formed and the end marker in place."""
    data = bytearray(_save(_rgb(3), "JPEG", quality=80))
    pos = data.index(b"\xff\xc0")
    data[pos + 1] = sof
    data[pos + 4] = precision
    data[pos + 5:pos + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _bogus_huffman() -> bytes:
    data = bytearray(_save(Image.fromarray(_pixels(64, 64, seed=7)), "JPEG", quality=90))
    table = data.index(b"\xff\xc4")
    data[table + 5:table + 21] = b"\xff" * 16  # the code counts: an impossible table
    return bytes(data)


def _palette_png(plte: bytes) -> bytes:
    """An 8 x 8 palette PNG indexing entries 0-6 of the given PLTE body."""
    rows = b"".join(b"\0" + bytes([i % 7] * 8) for i in range(8))
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"PLTE", plte)
            + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))


def _bad_crc_png() -> bytes:
    data = bytearray(_save(_rgb(4), "PNG"))
    pos = data.index(b"IDAT") + 8
    data[pos] ^= 0xFF  # a flipped byte in the image data: its chunk CRC no longer matches
    return bytes(data)


def _zlib_garbage_png() -> bytes:
    return png_header_only(16, 16, idat=b"\x78\x9c" + bytes(range(7, 200)))


def _truncated_jpeg() -> bytes:
    whole = _save(Image.fromarray(_pixels(64, 64, seed=9)), "JPEG", quality=95)
    return whole[:len(whole) // 2]


def _entropy_cut_with_eoi() -> bytes:
    whole = _save(Image.fromarray(_pixels(64, 64, seed=10)), "JPEG", quality=95)
    return whole[:len(whole) // 2] + b"\xff\xd9"


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display; ImageFolder ignores it
    return _save(_rgb(5), "JPEG", exif=exif.tobytes(), quality=90)


def _apng() -> bytes:
    frames = [_rgb(s) for s in (11, 12, 13)]
    return _save(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)


def _palette_transparency() -> bytes:
    image = Image.fromarray(_pixels(seed=14)).convert("P", palette=Image.Palette.ADAPTIVE,
                                                       colors=16)
    return _save(image, "PNG", transparency=0)


def entries() -> list[Entry]:
    rgb = _rgb()
    good = [
        ("baseline.jpg", _save(rgb, "JPEG", quality=90), "a plain RGB JPEG"),
        ("progressive.jpg", _save(rgb, "JPEG", quality=90, progressive=True), "progressive"),
        ("cmyk.jpg", _save(Image.fromarray(_pixels(channels=4), "CMYK"), "JPEG"), "CMYK"),
        ("gray.jpg", _save(rgb.convert("L"), "JPEG"), "grayscale JPEG"),
        ("exif_rotated.jpg", _exif_rotated(), "EXIF orientation 6 (ignored by the loader)"),
        ("subsampled.jpeg", _save(rgb, "JPEG", subsampling=2, quality=50), "4:2:0, .jpeg"),
        ("entropy_cut_eoi.jpg", _entropy_cut_with_eoi(),
         "entropy data cut short but an EOI after it: libjpeg only warns and fills grey, "
         "so ImageFolder's loader loads it and lmdbio stores it"),
        ("rgb.png", _save(rgb, "PNG"), "a plain RGB PNG"),
        ("rgba.png", _save(Image.fromarray(_pixels(channels=4), "RGBA"), "PNG"), "alpha"),
        ("gray.png", _save(rgb.convert("L"), "PNG"), "grayscale PNG"),
        ("gray16.png", _save(Image.fromarray(
            _pixels(channels=1)[:, :, 0].astype(np.uint16) * 257), "PNG"), "16-bit grey"),
        ("rgb48.png", png_rgb48(), "16-bit per channel RGB"),
        ("palette_trns.png", _palette_transparency(), "palette with transparency"),
        ("palette_short.png", _palette_png(b"\x40" * 7),
         "a 7-byte PLTE indexed past its end: Pillow pads it, the loader loads it"),
        ("animated.png", _apng(), "APNG, 3 frames: the loader takes the first"),
        ("rgb.bmp", _save(rgb, "BMP"), "BMP"),
        ("rgb.tif", _save(rgb, "TIFF"), "uncompressed TIFF"),
        ("lzw.tiff", _save(rgb, "TIFF", compression="tiff_lzw"), "LZW TIFF"),
        ("rgb.webp", _save(rgb, "WEBP", quality=80), "lossy WebP"),
        ("lossless.webp", _save(rgb, "WEBP", lossless=True), "lossless WebP"),
        ("rgb.ppm", _save(rgb, "PPM"), "PPM"),
        ("gray.pgm", _save(rgb.convert("L"), "PPM"), "PGM"),
    ]
    bad = [
        ("bomb_20000.png", png_header_only(20000, 20000), "decompression bomb", True,
         "a 20 000 x 20 000 PNG header (400 Mpx, over twice MAX_IMAGE_PIXELS)"),
        ("bomb_30000.jpg", jpeg_with_frame(30000, 30000), "decompression bomb", True,
         "a 30 000 x 30 000 JPEG frame header"),
        ("precision12.jpg", jpeg_with_frame(32, 24, sof=0xC1, precision=12),
         "cannot identify", True, "SOF1, 12-bit samples: Pillow cannot handle them"),
        ("lossless12.jpg", jpeg_with_frame(32, 24, sof=0xC3, precision=12),
         "cannot identify", True, "SOF3 (lossless), 12-bit"),
        ("compression1.png", png_header_only(16, 16, compression=1), "truncated", True,
         "PNG IHDR with compression method 1 (only 0 exists)"),
        ("bogus_huffman.jpg", _bogus_huffman(), "broken data stream", True,
         "an impossible Huffman table; headers and end marker intact"),
        ("truncated.jpg", _truncated_jpeg(), "truncated", False, "half a JPEG, no EOI"),
        ("zlib_garbage.png", _zlib_garbage_png(), "broken data stream", True,
         "IDAT that is not a zlib stream"),
        ("bad_crc.png", _bad_crc_png(), "broken data stream", True, "a chunk whose CRC fails"),
        ("bad_palette.png", _palette_png(b"\x10" * 800), "invalid palette size", True,
         "a PLTE of 800 bytes: more than 256 entries, not a multiple of 3"),
        ("text.jpg", b"this is not an image\n" * 4, "cannot identify", False, "text"),
        ("empty.png", b"", "cannot identify", False, "an empty file"),
        ("magic_only.webp", b"RIFF\x10\0\0\0WEBPVP8 \x04\0\0\0\0\0\0\0", "decoder", False,
         "a WebP container with an empty VP8 chunk"),
    ]
    return ([Entry(f"good/{n}", d, None, True, w) for n, d, w in good]
            + [Entry(f"bad/{n}", d, r, s, w) for n, d, r, s, w in bad])


def png_rgb48() -> bytes:
    """16 bits per channel RGB (colour type 2, depth 16): Pillow reads it as RGB, 8-bit."""
    h, w = 8, 12
    pixels = (_pixels(h, w, seed=15).astype(">u2") * 257).tobytes()
    rows = b"".join(b"\0" + pixels[r * w * 6:(r + 1) * w * 6] for r in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows))
            + _chunk(b"IEND", b""))


def build(root: Path) -> list[Entry]:
    """Write the corpus as an ImageFolder under ``root`` (classes ``bad`` and ``good``)."""
    made = entries()
    for entry in made:
        path = root / entry.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(entry.data)
    return made
