"""Decoders from stored file bytes to what the transform expects.

``decode_pil`` matches ``torchvision.datasets.folder.pil_loader`` pixel for pixel (RGB PIL
image), so ``ImageFolderLMDB`` is a drop-in. Pass another callable as ``decode=`` to trade
exactness for speed:

* ``DraftDecoder(min_size)``: RGB PIL image, JPEGs decoded at a reduced DCT scale (1/2, 1/4,
  1/8) that keeps both sides >= ``min_size``; for the seed's PIL transform.
* ``decode_tensor``: uint8 CHW RGB tensor decoded by torchvision (libjpeg-turbo / libpng),
  for ``torchvision.transforms.v2`` pipelines on tensors.

Nothing here imports torch, torchvision or Pillow before a decoder is called.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .validate import JPEG_START, PNG_START

if TYPE_CHECKING:
    import torch

__all__ = ["DraftDecoder", "decode_pil", "decode_tensor", "pure_decoder"]


def decode_pil(data: bytes) -> Any:
    """Bytes of any image format Pillow reads -> RGB ``PIL.Image.Image``: what
    ``pil_loader`` returns (a plain ``Image.Image``, same mode, size, ``info`` and pixels)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return _as_rgb(image)


def _as_rgb(image: Any) -> Any:
    """``image.convert("RGB")`` of an image opened here, without the copy it makes of one
    that is RGB already (``copy()``: ``_new(im.copy())``): its decoded pixels are ours alone,
    the opened file is dropped, so they are handed over as they are. 13 us of the ~430 us a
    450 x 340 JPEG takes to decode (README, measured side by side); the result is what
    ``convert`` returns (a plain ``Image.Image``, same ``info``, writable)."""
    image.load()  # what convert() does first: the same errors, at the same point
    if image.mode != "RGB" or image.readonly:  # readonly: pixels mapped from a file
        return image.convert("RGB")
    return image._new(image.im)


@dataclass(frozen=True)
class DraftDecoder:
    """Bytes -> RGB ``PIL.Image.Image``, JPEGs decoded at reduced size (``Image.draft``).

    libjpeg can run its inverse DCT at 1/2, 1/4 or 1/8 scale, which skips most of the decode
    work. For a JPEG of ``W x H``, Pillow's ``draft("RGB", (m, m))`` (m = ``min_size``) takes
    ``s`` = the largest of 8, 4, 2, 1 with ``s <= min(W // m, H // m)`` and decodes at
    ``ceil(W / s) x ceil(H / s)``; since ``s * m <= W`` and ``s * m <= H``, both sides stay
    >= ``min_size`` whenever the original's are (an image already smaller than ``min_size``
    is decoded at full size). Other formats (PNG, ...) decode exactly as ``decode_pil``;
    grayscale and CMYK JPEGs are reduced too, then converted to RGB.

    Trade-off: ``RandomResizedCrop(size)`` (scale 0.08-1) crops a region of the *decoded*
    image, so from a reduced image a small crop is upsampled from fewer source pixels
    (blurrier; a crop covering the whole image loses nothing as long as ``min_size >=
    size``). ``min_size = size`` is the fastest; ``min_size = 2 * size`` upsamples at most the
    crops under 1/4 of the image's area; ``min_size >= 4 * size`` (``size / sqrt(0.08)`` = 3.5x)
    never upsamples, but reduces only images at least 8x the crop size. Measured on one core,
    decode + the seed transform (``RandomResizedCrop(64)``, flip, ToTensor, Normalize) of the
    synthetic ~450 x 340 px JPEGs: ``decode_pil`` 830 images/s, ``DraftDecoder(64)`` 1 500
    (1.8x, decoded at 1/4 scale), ``DraftDecoder(128)`` 1 190 (1.4x, 1/2 scale). Recommended:
    ``2 * size`` for training; ``size`` when decoding is the bottleneck and blurrier small
    crops are acceptable. Not pixel-identical to ``ImageFolder``: use ``decode_pil`` where
    that matters.

    Picklable (a frozen dataclass), so it works in DataLoader workers under spawn.
    """

    min_size: int

    def __post_init__(self) -> None:
        if not isinstance(self.min_size, int) or isinstance(self.min_size, bool) or \
                self.min_size < 1:
            raise ValueError(f"min_size must be an int >= 1, not {self.min_size!r}")

    def __call__(self, data: bytes) -> Any:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            if image.format in ("JPEG", "MPO"):  # MPO: a JPEG with extra pictures
                image.draft("RGB", (self.min_size, self.min_size))
            return _as_rgb(image)


def decode_tensor(data: bytes) -> torch.Tensor:
    """Bytes -> ``torch.uint8`` tensor ``[3, H, W]``, RGB, decoded by torchvision.

    JPEG (RGB, grayscale, CMYK) and 8-bit PNG go through ``torchvision.io.decode_jpeg`` /
    ``decode_png`` with ``ImageReadMode.RGB`` (~1.3x faster than Pillow for JPEG, and no PIL
    image is built); other formats, 16-bit PNGs and JPEGs libjpeg-turbo refuses are decoded
    with ``decode_pil``. Pixels equal ``np.asarray(decode_pil(data))`` transposed to CHW, up
    to rounding differences between JPEG decoders (a few levels at most); EXIF orientation is
    ignored, as ``decode_pil`` ignores it. The tensor is a CHW view of HWC memory
    (channels-last strides, as torchvision's decoders return it; its uint8 antialiased resize
    is fast on that layout): call ``.contiguous()`` if something needs it packed.

    torchvision 0.29 deprecates its image decoders in favour of TorchCodec and warns
    (``DeprecationWarning``, hidden by default) on each call; they still work.

    Pairs with ``torchvision.transforms.v2`` on tensors, e.g. the seed's transform as
    ``lmdbio.study.harness.seed_transform_tensor(64)``: ``RandomResizedCrop(64, antialias=True)``,
    ``RandomHorizontalFlip()``, ``ToDtype(torch.float32, scale=True)``, ``Normalize(...)``.
    The classic ``transforms.ToTensor`` expects a PIL image and must not be used on it.
    """
    import numpy as np
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, decode_png

    head = bytes(data[:8])
    decoder = (decode_jpeg if head.startswith(JPEG_START)
               else decode_png if head.startswith(PNG_START) else None)
    if decoder is not None:
        # bytearray: torch.frombuffer warns on read-only buffers (bytes, LMDB memoryviews)
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        try:
            image = decoder(encoded, mode=ImageReadMode.RGB)
        except RuntimeError:  # e.g. arithmetic-coded JPEG: let Pillow decide
            image = None
        if image is not None and image.dtype == torch.uint8:
            return image
    return torch.from_numpy(np.array(decode_pil(data))).permute(2, 0, 1)


def pure_decoder(decode: Any) -> bool:
    """Whether ``decode`` is one of this module's decoders, whose result depends on the bytes
    alone (so records may be decoded in any order: ``lmdbio.arrival``)."""
    return decode is decode_pil or decode is decode_tensor or type(decode) is DraftDecoder
