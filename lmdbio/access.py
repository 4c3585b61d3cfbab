"""The one way to open a database: one file, a shard set (glob or list) or a seed file.

``open_database`` returns a ``SampleReader``: ``database.Database`` for one lmdbio file,
``shard_set.ShardedDatabase`` for the shards of one conversion, ``legacy.LegacyDatabase`` for a
pytorch-lmdb seed file (only with ``allow_pickle=True``). ``ImageFolderLMDB``, the CLI and the
study read every kind through this interface and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from .database import Database
from .envs import EnvOptions
from .errors import LegacyFormatError
from .format import Metadata
from .legacy import LegacyDatabase
from .shard_set import PathInput, ShardedDatabase, expand_paths

__all__ = ["SampleReader", "open_database"]


@runtime_checkable
class SampleReader(Protocol):
    """What a reader of samples offers, whatever the files behind it."""

    path: str  # one path, or the shard paths joined for messages

    @property
    def paths(self) -> list[str]:
        """The database file(s) read."""

    @property
    def meta(self) -> Metadata:
        """The header: classes, counts, source, conversion settings."""

    def __len__(self) -> int: ...

    def get(self, index: int) -> tuple[int, bytes]:
        """``(label, original file bytes)`` of sample ``index``."""

    def targets(self) -> list[int]:
        """Every sample's class index, in index order."""

    def relative_paths(self) -> list[str]:
        """Every sample's path relative to the source root, in index order."""

    def will_need(self, start: int, stop: int) -> None:
        """Ask storage to read samples ``[start, stop)`` ahead (a hint; may do nothing)."""

    def will_need_records(self, indices: Iterable[int]) -> None:
        """Ask storage to read samples ``indices`` ahead, together (a hint; may do nothing)."""

    def fetch_records(self, indices: Iterable[int]) -> None:
        """Read samples ``indices`` into the page cache together where they are not there yet,
        and return when they are (may do nothing; reports nothing)."""

    def records_cached(self, indices: Sequence[int]) -> list[bool]:
        """For each of samples ``indices``: whether reading it now waits for no storage
        (True where that cannot be told)."""

    def close(self) -> None:
        """Release this process's LMDB environment(s); reads reopen them."""

    def __enter__(self) -> SampleReader: ...

    def __exit__(self, *exc: object) -> None: ...


def open_database(paths: PathInput, options: EnvOptions | None = None, *,
                  verify_checksums: bool = True, allow_pickle: bool = False) -> SampleReader:
    """Open a database for reading.

    Args:
        paths: a ``.lmdb`` file, a glob such as ``train-*.lmdb``, or a list of shard files; a
            file that is one shard of several opens its whole set (checked to be complete).
        options: LMDB knobs (``readahead``, ``lock``, ``max_readers``...).
        verify_checksums: check each record's CRC32 on read.
        allow_pickle: also open a pytorch-lmdb seed (pickled) file, through a NumPy-only
            unpickler. Off by default: unpickling runs code a crafted file chooses.
    """
    files = expand_paths(paths)
    single = isinstance(paths, (str, os.PathLike)) and files == [
        os.path.expanduser(os.fspath(paths))]
    if not single:
        return ShardedDatabase(files, options, verify_checksums=verify_checksums)
    try:
        db = Database(files[0], options, verify_checksums=verify_checksums)
    except LegacyFormatError:
        if not allow_pickle:
            raise
        return LegacyDatabase(files[0], options)
    if db.meta.shard_count > 1:
        db.close()
        return ShardedDatabase(files, options, verify_checksums=verify_checksums)
    return db
