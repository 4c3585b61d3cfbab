"""lmdbio: an ImageFolder tree as one pickle-free LMDB file, read back as a drop-in Dataset.

    import lmdbio
    lmdbio.convert("data/train")                       # -> data/train.lmdb
    dataset = lmdbio.ImageFolderLMDB("data/train.lmdb", transform=...)

``import lmdbio`` does not import torch or torchvision; ``ImageFolderLMDB`` (which needs torch)
is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .access import SampleReader, open_database
from .converter import ConvertReport, convert, default_destination
from .database import Database
from .decode import DraftDecoder, decode_pil, decode_tensor
from .envs import EnvOptions
from .errors import (ConcurrentWriteError, ConversionProcessError, ConvertOptionError,
                     CorruptRecordError, DatabaseChangedError, DatabaseNotFoundError,
                     DestinationError, DiskFullError, FormatError,
                     ImageDecodeError, LegacyFormatError, LmdbioError, MissingDependencyError,
                     OpenOptionsError, OutputExistsError, ResizeOptionError, ResumeError,
                     SampleNotFoundError, ShardSetError, ShardSpecError, SourceError,
                     SourceFileError, SourceNotAFolderError)
from .folder import IMG_EXTENSIONS, find_classes, make_dataset
from .samplers import BlockShuffleSampler
from .shard_conversion import convert_shards
from .shard_set import ShardedDatabase
from .tools import DatabaseInfo, VerifyReport, extract, info, verify

if TYPE_CHECKING:
    from .dataset import ImageFolderLMDB

__all__ = [
    "IMG_EXTENSIONS",
    "BlockShuffleSampler",
    "ConcurrentWriteError",
    "ConversionProcessError",
    "ConvertOptionError",
    "ConvertReport",
    "CorruptRecordError",
    "Database",
    "DatabaseChangedError",
    "DatabaseInfo",
    "DatabaseNotFoundError",
    "DestinationError",
    "DiskFullError",
    "DraftDecoder",
    "EnvOptions",
    "FormatError",
    "ImageDecodeError",
    "ImageFolderLMDB",
    "LegacyFormatError",
    "LmdbioError",
    "MissingDependencyError",
    "OpenOptionsError",
    "OutputExistsError",
    "ResizeOptionError",
    "ResumeError",
    "SampleNotFoundError",
    "SampleReader",
    "ShardSetError",
    "ShardSpecError",
    "ShardedDatabase",
    "SourceError",
    "SourceFileError",
    "SourceNotAFolderError",
    "VerifyReport",
    "__version__",
    "convert",
    "convert_shards",
    "decode_pil",
    "decode_tensor",
    "default_destination",
    "extract",
    "find_classes",
    "info",
    "make_dataset",
    "open_database",
    "verify",
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"ImageFolderLMDB"})


def __getattr__(name: str) -> Any:
    if name == "ImageFolderLMDB":  # imports torch (~3 s): only when asked for
        from .dataset import ImageFolderLMDB

        return ImageFolderLMDB
    raise AttributeError(f"module 'lmdbio' has no attribute {name!r}")
