"""Decoders from stored file bytes to what the transform expects.

``decode_pil`` matches ``torchvision.datasets.folder.pil_loader`` pixel for pixel (RGB PIL
image), so ``ImageFolderLMDB`` is a drop-in. Pass another callable as ``decode=`` to compare
decoders (the study does).
"""

from __future__ import annotations

import io
from typing import Any

__all__ = ["decode_pil"]


def decode_pil(data: bytes) -> Any:
    """Bytes of any image format Pillow reads -> RGB ``PIL.Image.Image``."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
