"""The fast decoders: ``DraftDecoder`` (reduced-size JPEG decode) and ``decode_tensor``
(torchvision), against ``decode_pil`` on real encoded images, and in real DataLoader workers."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets.folder import pil_loader

import lmdbio
from lmdbio.dataset import ImageFolderLMDB
from lmdbio.decode import DraftDecoder, decode_pil, decode_tensor

from tests.helpers import encode, jpeg_bytes, make_image, write

# torchvision 0.29 deprecates its decoders (for TorchCodec), warning on every call
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def image_bytes(kind: str, size: tuple[int, int], seed: int = 0) -> bytes:
    """One encoded image: ``jpeg``, ``jpeg-L``, ``jpeg-CMYK``, ``jpeg-progressive``,
    ``jpeg-mpo``, ``png``, ``png-RGBA``, ``png-P``, ``png-L``, ``png-16``, ``bmp``, ``webp``,
    ``tiff``."""
    image = make_image(seed, size)
    if kind == "jpeg":
        return jpeg_bytes(seed, size)
    if kind in ("jpeg-L", "jpeg-CMYK"):
        return encode(image.convert(kind[5:]), "JPEG", quality=90)
    if kind == "jpeg-progressive":
        return encode(image, "JPEG", quality=85, progressive=True)
    if kind == "jpeg-mpo":  # what some cameras write: Pillow opens it as format "MPO"
        return encode(image, "MPO", save_all=True, append_images=[make_image(seed + 1, size)])
    if kind == "png-P":
        return encode(image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG")
    if kind == "png-16":
        return encode(image.convert("L").convert("I;16"), "PNG")
    if kind.startswith("png"):
        return encode(image.convert(kind[4:] or "RGB"), "PNG")
    return encode(image, kind.upper(), **({"lossless": True} if kind == "webp" else {}))


JPEGS = ["jpeg", "jpeg-L", "jpeg-CMYK", "jpeg-progressive", "jpeg-mpo"]
OTHERS = ["png", "png-RGBA", "png-P", "png-L", "png-16", "bmp", "webp", "tiff"]


# -- decode_pil -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", JPEGS + OTHERS + ["png-RGB-transparency"])
def test_decode_pil_returns_what_pil_loader_returns(kind: str, tmp_path: Path) -> None:
    """Not only the pixels: the same class, mode, size, ``info`` and (no) ``format``, also
    where ``decode_pil`` hands over an RGB image's decoded pixels instead of copying them."""
    if kind == "png-RGB-transparency":  # RGB with a tRNS colour: convert("RGB") keeps it
        data = encode(make_image(3, (40, 30)), "PNG", transparency=(1, 2, 3))
    else:
        data = image_bytes(kind, (40, 30))
    path = tmp_path / "image"
    path.write_bytes(data)
    image, expected = decode_pil(data), pil_loader(str(path))
    assert type(image) is type(expected) is Image.Image
    assert (image.mode, image.size, image.format) == (expected.mode, expected.size, None)
    assert image.info == expected.info and image.readonly == expected.readonly == 0
    assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_decode_pil_images_are_independent_and_writable() -> None:
    data = image_bytes("jpeg", (40, 30))
    first, second = decode_pil(data), decode_pil(data)
    before = np.asarray(second).copy()
    first.paste((255, 0, 0), (0, 0, 40, 30))
    assert np.asarray(first).tolist()[0][0] == [255, 0, 0]
    assert np.array_equal(np.asarray(second), before)
    assert np.array_equal(np.asarray(decode_pil(data)), before)


# -- DraftDecoder ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", JPEGS)
@pytest.mark.parametrize("size, min_size, expected", [
    ((400, 300), 64, (100, 75)),     # min(400 // 64, 300 // 64) = 4 -> 1/4
    ((257, 130), 64, (129, 65)),     # 2 -> 1/2, sides rounded up
    ((512, 512), 64, (64, 64)),      # exactly 8x: 1/8, both sides == min_size
    ((1100, 520), 64, (138, 65)),    # 8 -> 1/8 (the largest scale libjpeg offers)
    ((400, 300), 150, (200, 150)),   # 2 -> 1/2, 150 x 150 still fits
    ((400, 300), 200, (400, 300)),   # 300 // 200 = 1: full size
    ((50, 40), 64, (50, 40)),        # smaller than min_size: full size
])
def test_draft_sizes(kind: str, size: tuple[int, int], min_size: int,
                     expected: tuple[int, int]) -> None:
    data = image_bytes(kind, size)
    image = DraftDecoder(min_size)(data)
    assert image.mode == "RGB" and image.size == expected
    full = decode_pil(data)
    assert full.size == size
    if expected == size:  # nothing to reduce: exactly decode_pil
        assert image.tobytes() == full.tobytes()
    else:  # the same picture, at lower resolution: compare with s x s box averages
        s = next(s for s in (2, 4, 8) if (-(-size[0] // s), -(-size[1] // s)) == expected)
        inner = (size[0] // s, size[1] // s)  # the last column/row may cover a partial block
        reference = full.resize(inner, Image.Resampling.BOX, box=(0, 0, inner[0] * s,
                                                                   inner[1] * s))
        got = np.asarray(image.crop((0, 0, *inner)), dtype=np.int16)
        assert np.abs(got - np.asarray(reference, dtype=np.int16)).mean() < 4


def test_draft_keeps_both_sides_at_least_min_size() -> None:
    rng = np.random.default_rng(0)
    for width, height, min_size in rng.integers(8, 300, size=(60, 3)):
        width, height, min_size = int(width), int(height), int(min_size) // 3 + 1
        image = DraftDecoder(min_size)(jpeg_bytes(1, (width, height), noise=2))
        scale = [s for s in (1, 2, 4, 8) if image.size == (math.ceil(width / s),
                                                           math.ceil(height / s))]
        assert scale, (width, height, min_size, image.size)
        if width >= min_size and height >= min_size:
            assert min(image.size) >= min_size, (width, height, min_size, image.size)
            assert scale[0] * 2 * min_size > min(width, height) or scale[0] == 8
        else:
            assert image.size == (width, height)


@pytest.mark.parametrize("kind", OTHERS)
def test_draft_decodes_other_formats_exactly_as_decode_pil(kind: str) -> None:
    data = image_bytes(kind, (300, 200))
    image, full = DraftDecoder(32)(data), decode_pil(data)
    assert image.mode == "RGB" and image.size == full.size == (300, 200)
    assert image.tobytes() == full.tobytes()


def test_draft_decoder_pickles_and_validates() -> None:
    decoder = DraftDecoder(128)
    clone = pickle.loads(pickle.dumps(decoder))
    assert clone == decoder and repr(clone) == "DraftDecoder(min_size=128)"
    data = jpeg_bytes(3, (600, 400))
    assert clone(data).tobytes() == decoder(data).tobytes()
    for bad in (0, -1, 2.5, True, "64"):
        with pytest.raises(ValueError, match="min_size"):
            DraftDecoder(bad)  # type: ignore[arg-type]


def test_draft_decoder_raises_what_decode_pil_raises() -> None:
    data = jpeg_bytes(4, (300, 200))
    for broken in (data[: len(data) // 2], b"\xff\xd8\xff" + b"junk" * 10, b""):
        with pytest.raises(OSError) as expected:
            decode_pil(broken).load()
        with pytest.raises(type(expected.value)):
            DraftDecoder(64)(broken)


# -- decode_tensor --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", JPEGS + OTHERS)
def test_decode_tensor_matches_decode_pil(kind: str) -> None:
    data = image_bytes(kind, (90, 70), seed=5)
    tensor = decode_tensor(data)
    expected = np.asarray(decode_pil(data))
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 70, 90)
    difference = np.abs(tensor.permute(1, 2, 0).numpy().astype(np.int16) - expected)
    assert difference.mean() < 1.0 and difference.max() <= 8, kind  # JPEG decoders may round


def test_decode_tensor_takes_memoryviews_and_bytearrays() -> None:
    data = jpeg_bytes(6, (64, 48))
    reference = decode_tensor(data)
    for wrapped in (memoryview(data), bytearray(data), memoryview(b"xx" + data)[2:]):
        assert torch.equal(decode_tensor(wrapped), reference)


def test_decode_tensor_raises_what_decode_pil_raises() -> None:
    data = jpeg_bytes(7, (300, 200))
    for broken in (data[: len(data) // 2], b"\xff\xd8\xff" + b"junk" * 10,
                   b"\x89PNG\r\n\x1a\n" + b"junk" * 10, b"not an image"):
        with pytest.raises(OSError) as expected:
            decode_pil(broken)
        with pytest.raises(type(expected.value)):
            decode_tensor(broken)


def test_the_decoders_are_exported() -> None:
    assert lmdbio.DraftDecoder is DraftDecoder and lmdbio.decode_tensor is decode_tensor


# -- in DataLoader workers ------------------------------------------------------------------------


def image_size(image) -> tuple[int, int]:  # module level: spawn workers import it by name
    return image.size


def tensor_shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


@pytest.fixture(scope="module")
def big_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("draft") / "train"
    for c, name in enumerate(("a", "b")):
        for i in range(3):
            write(root / name / f"{i}.jpg", jpeg_bytes(100 * c + i, (400, 300)))
    write(root / "b" / "z.png", encode(make_image(9, (120, 90)), "PNG"))
    return Path(lmdbio.convert(root, progress=False, workers=2).destination)


@pytest.mark.slow
@pytest.mark.parametrize("decode, transform, expected", [
    (DraftDecoder(64), image_size, [(100, 75)] * 6 + [(120, 90)]),
    (decode_tensor, tensor_shape, [(3, 300, 400)] * 6 + [(3, 90, 120)]),
])
def test_decoders_work_in_spawned_workers(big_db: Path, decode, transform, expected) -> None:
    dataset = ImageFolderLMDB(big_db, transform=transform, decode=decode)
    loader = DataLoader(dataset, batch_size=None, num_workers=2,
                        multiprocessing_context="spawn")
    seen = [(tuple(int(v) for v in value), int(target)) for value, target in loader]
    assert [value for value, _ in seen] == expected
    assert [target for _, target in seen] == dataset.targets
