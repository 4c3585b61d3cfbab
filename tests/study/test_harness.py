"""The study harness's seed transforms: the tensor one (``transforms.v2`` on ``decode_tensor``)
gives what the PIL one gives (moved here from the library's decoder tests)."""

from __future__ import annotations

import pytest
import torch

from lmdbio.decode import decode_pil, decode_tensor
from lmdbio.study.harness import seed_transform, seed_transform_tensor

from tests.helpers import jpeg_bytes

# torchvision 0.29 deprecates its decoders (for TorchCodec), warning on every call
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def test_seed_transforms_give_the_same_shapes() -> None:
    data = jpeg_bytes(8, (300, 200))
    torch.manual_seed(0)
    from_tensor = seed_transform_tensor(64)(decode_tensor(data))
    from_pil = seed_transform(64)(decode_pil(data))
    assert from_tensor.shape == from_pil.shape == (3, 64, 64)
    assert from_tensor.dtype == from_pil.dtype == torch.float32
    # normalised the same way: an identity crop of the whole image agrees closely
    full = seed_transform_tensor(200).transforms[2:]  # ToDtype, Normalize
    classic = seed_transform(200).transforms[2:]      # ToTensor, Normalize
    a = torch.nn.Sequential(*full)(decode_tensor(data))
    b = classic[1](classic[0](decode_pil(data)))
    assert torch.allclose(a, b, atol=1e-5)
