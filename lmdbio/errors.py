"""Typed, one-line errors.

Every message says what went wrong, which value (usually a path) and what to do next.
Each class also subclasses the built-in a caller would naturally catch (``FileNotFoundError``,
``ValueError``...), so ``except OSError`` style code written for ImageFolder keeps working.
"""

from __future__ import annotations

__all__ = [
    "ConcurrentWriteError",
    "ConversionProcessError",
    "ConvertOptionError",
    "CorruptRecordError",
    "DatabaseChangedError",
    "DatabaseNotFoundError",
    "DestinationError",
    "DiskFullError",
    "FormatError",
    "ImageDecodeError",
    "LegacyFormatError",
    "LmdbioError",
    "MissingDependencyError",
    "OpenOptionsError",
    "OutputExistsError",
    "ResizeOptionError",
    "ResumeError",
    "SampleNotFoundError",
    "ShardSetError",
    "ShardSpecError",
    "SourceError",
    "SourceFileError",
    "SourceNotAFolderError",
    "printable",
]


class LmdbioError(Exception):
    """Base class of every error lmdbio raises on purpose."""


class SourceError(LmdbioError, FileNotFoundError):
    """The source tree is missing or is not an ImageFolder (no classes, an empty class...)."""


class SourceNotAFolderError(SourceError, NotADirectoryError):
    """The source is a file, not a folder (a ``NotADirectoryError``, as ImageFolder raises)."""


class SourceFileError(LmdbioError, OSError):
    """One source file cannot be read or is not a valid image."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])


class OutputExistsError(LmdbioError, FileExistsError):
    """The destination exists and overwriting was not requested."""


class ConcurrentWriteError(LmdbioError, RuntimeError):
    """Another conversion is writing the same destination right now."""


class ConversionProcessError(LmdbioError, RuntimeError):
    """A process converting a shard died (killed: out of memory?); ``--resume`` continues."""


class ConvertOptionError(LmdbioError, ValueError):
    """``convert`` options that contradict each other (``--verify-images`` with ``--check
    structure``) or cannot work."""


class ResizeOptionError(ConvertOptionError):
    """Resize options that cannot work (``--max-size 0``, ``--quality`` without
    ``--max-size``...)."""


class ResumeError(LmdbioError, ValueError):
    """``resume`` was asked for but the partial output does not match the source."""


class DestinationError(LmdbioError, OSError):
    """The destination cannot be written (missing parent folder, permissions, a directory...)."""


class DiskFullError(LmdbioError, OSError):
    """The destination's file system ran out of space."""


class DatabaseNotFoundError(LmdbioError, FileNotFoundError):
    """The database path does not exist."""


class FormatError(LmdbioError, ValueError):
    """The file is not an lmdbio database, is incomplete, or has a newer format version."""


class DatabaseChangedError(FormatError):
    """The file was rewritten in place while open (``cp B A``): what is read now is no longer
    the conversion that was opened; close and reopen it."""


class SampleNotFoundError(LmdbioError, FileNotFoundError):
    """A path (in an assigned ``samples``, or given to ``loader``) that is not stored in the
    database; a ``FileNotFoundError``, as ImageFolder's loader raises for a missing file."""


class LegacyFormatError(FormatError):
    """A seed-style (pickled) database, which is only read with ``allow_pickle=True``."""


class CorruptRecordError(FormatError):
    """A record's header or checksum does not match its payload."""


class ImageDecodeError(CorruptRecordError, OSError):
    """A record whose checksum holds but whose payload does not decode as an image (empty, not
    an image, truncated). Also an ``OSError``, as Pillow's ``UnidentifiedImageError`` that
    ImageFolder's loader raises, so ``except OSError`` written for ImageFolder still catches it."""


class MissingDependencyError(LmdbioError, ModuleNotFoundError):
    """An optional package an option needs is not installed (``advise``'s seed transform
    without torch and torchvision)."""


class OpenOptionsError(LmdbioError, ValueError):
    """The database is already open in this process with other LMDB options (``readahead``,
    ``lock``...): LMDB allows one environment per file per process."""


class ShardSpecError(LmdbioError, ValueError):
    """A shard request that cannot be met (``--shard 2/2``, more shards than images...)."""


class ShardSetError(FormatError):
    """Shard files that do not form one complete set (one missing, duplicated, or from
    another source)."""


def printable(text: object) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``, ``\\n``, ``\\u202e``,
    surrogate-escaped bytes ``\\udcff``...), so names read from a (possibly hostile) file
    can neither move the cursor, clear the screen, nor fake extra lines. The CLI passes every
    piece of stored text it prints through here."""
    text = str(text)
    if text.isprintable():
        return text  # the common case: one C-level scan
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace")
                   .decode("ascii") for c in text)
