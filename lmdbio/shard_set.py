"""Read a set of shard files as one database with global indices (no torch here).

``ShardedDatabase`` has the interface of ``database.Database`` (``access.SampleReader`` (``get``, ``len``, ``meta``,
``targets()``, ``relative_paths()``, ``close()``)), so ``ImageFolderLMDB`` reads shards exactly as
it reads one file. The set is checked when opened: every shard from the same source listing
(fingerprint, classes, size), every index ``0..N-1`` present once, the listing ranges
contiguous. Each shard's LMDB environment opens lazily, per process, on first read.
"""

from __future__ import annotations

import bisect
import dataclasses
import glob
import os
from collections.abc import Iterable, Sequence

from .envs import EnvOptions
from .errors import DatabaseNotFoundError, ShardSetError
from .format import Metadata
from .database import Database
from .resize import describe
from .shard_plan import is_glob, set_name, shard_glob, shard_path

__all__ = ["PathInput", "ShardedDatabase", "expand_paths"]

PathInput = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def expand_paths(paths: PathInput) -> list[str]:
    """A path, a glob pattern (``*``, ``?``, ``[``) or a list of either -> sorted file list."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found: list[str] = []
    for item in items:
        path = os.path.expanduser(os.fspath(item))
        if is_glob(path) and not os.path.exists(path):
            matches = sorted(glob.glob(path))
            if not matches:
                raise DatabaseNotFoundError(f"no database matches {path!r}; check the pattern "
                                            "or create the shards with 'lmdbio convert "
                                            "--num-shards N'")
            found += matches
        else:
            found.append(path)
    if not found:
        raise DatabaseNotFoundError("an empty list of databases was given; pass a path, a "
                                    "glob such as 'train-*.lmdb' or a list of shard files")
    return found


class ShardedDatabase:
    """The shards of one source listing, read as one database.

    Args:
        paths: the shard files (any order; a glob pattern or one path is expanded).
        options: LMDB knobs, as for ``database.Database``.
        verify_checksums: check each record's CRC32 on read.
    """

    def __init__(self, paths: PathInput, options: EnvOptions | None = None, *,
                 verify_checksums: bool = True) -> None:
        files = expand_paths(paths)
        self.shards: list[Database] = []
        try:
            for path in files:
                db = Database(path, options, verify_checksums=verify_checksums)
                db.close()  # reopened lazily by whichever process reads
                self.shards.append(db)
            self.shards = _check_set(self.shards)
        except BaseException:
            self.close()
            raise
        self.paths = [db.path for db in self.shards]
        self.path = self.paths[0] if len(self.paths) == 1 else ", ".join(self.paths)
        self.offsets = [0]
        for db in self.shards:
            self.offsets.append(self.offsets[-1] + len(db))
        first = self.shards[0].meta
        self.meta: Metadata = dataclasses.replace(
            first, num_samples=self.offsets[-1], shard_index=0, shard_start=0,
            shard_stop=first.listing_total,
            payload_bytes=sum(db.meta.payload_bytes for db in self.shards),
            skipped=[item for db in self.shards for item in db.meta.skipped],
            warnings=[item for db in self.shards for item in db.meta.warnings])

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """Global ``index`` -> (shard number, index within that shard)."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples in "
                             f"{len(self.shards)} shards")
        shard = bisect.bisect_right(self.offsets, index) - 1
        return shard, index - self.offsets[shard]

    def get(self, index: int) -> tuple[int, bytes]:
        """``(label, original file bytes)`` of global sample ``index``."""
        if not 0 <= index < self.offsets[-1]:
            self.locate(index)  # raises the IndexError
        shard = bisect.bisect_right(self.offsets, index) - 1  # inlined: ~1 us per sample
        return self.shards[shard].get(index - self.offsets[shard])

    def will_need(self, start: int, stop: int) -> None:
        """``Database.will_need`` over global indices, split at shard boundaries."""
        for shard, db in enumerate(self.shards):
            low, high = max(start, self.offsets[shard]), min(stop, self.offsets[shard + 1])
            if low < high:
                db.will_need(low - self.offsets[shard], high - self.offsets[shard])

    def _by_shard(self, indices: Iterable[int]) -> dict[int, tuple[list[int], list[int]]]:
        """Global indices in range, per shard: (their positions in ``indices``, the shard's own
        indices)."""
        by_shard: dict[int, tuple[list[int], list[int]]] = {}
        for position, index in enumerate(indices):
            if 0 <= index < self.offsets[-1]:
                shard = bisect.bisect_right(self.offsets, index) - 1
                positions, local = by_shard.setdefault(shard, ([], []))
                positions.append(position)
                local.append(index - self.offsets[shard])
        return by_shard

    def will_need_records(self, indices: Iterable[int]) -> None:
        """``Database.will_need_records`` over global indices, each asked of its shard."""
        for shard, (_, local) in self._by_shard(indices).items():
            self.shards[shard].will_need_records(local)

    def fetch_records(self, indices: Iterable[int]) -> None:
        """``Database.fetch_records`` over global indices, shard by shard (a batch spread over
        k shards waits for k rounds of reads, still not one per record)."""
        for shard, (_, local) in self._by_shard(indices).items():
            self.shards[shard].fetch_records(local)

    def records_cached(self, indices: Sequence[int]) -> list[bool]:
        """``Database.records_cached`` over global indices, each asked of its shard."""
        answers = [True] * len(indices)
        for shard, (positions, local) in self._by_shard(indices).items():
            for position, cached in zip(positions, self.shards[shard].records_cached(local)):
                answers[position] = cached
        return answers

    def targets(self) -> list[int]:
        return [t for db in self.shards for t in db.targets()]

    def relative_paths(self) -> list[str]:
        return [p for db in self.shards for p in db.relative_paths()]

    def lib_version(self) -> str:
        return self.shards[0].lib_version()

    def close(self) -> None:
        """Release every shard's environment in this process."""
        for db in self.shards:
            db.close()

    def __enter__(self) -> ShardedDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_set(shards: list[Database]) -> list[Database]:
    """The shards in index order, or ``ShardSetError`` naming the odd, duplicate or missing
    file."""
    keys = [(db.meta.source_fingerprint, db.meta.shard_count, db.meta.listing_total)
            for db in shards]
    common = max(keys, key=lambda k: (keys.count(k), -keys.index(k)))  # the majority's
    odd = next((db for db, key in zip(shards, keys) if key != common), None)
    if odd is not None:
        reference = shards[keys.index(common)]
        raise ShardSetError(
            f"{odd.path!r} does not belong with {reference.path!r}: {_describe(odd.meta)} vs "
            f"{_describe(reference.meta)}; pass only the shards of one conversion (re-convert "
            "the odd one from the same source with the same shard count)")
    count = shards[0].meta.shard_count
    seen: dict[int, Database] = {}
    for db in shards:
        if db.meta.classes != shards[0].meta.classes:  # the fingerprint covers them: damage
            raise ShardSetError(f"{db.path!r} lists other classes than {shards[0].path!r}; "
                                "re-convert it")
        setting = [db.meta.max_size, db.meta.quality]
        expected = [shards[0].meta.max_size, shards[0].meta.quality]
        if setting != expected:
            raise ShardSetError(f"{db.path!r} was converted with {describe(setting)}, "
                                f"{shards[0].path!r} with {describe(expected)}; re-convert "
                                "one so that all shards match")
        if db.meta.shard_index in seen:
            raise ShardSetError(f"{db.path!r} and {seen[db.meta.shard_index].path!r} are both "
                                f"shard {db.meta.shard_index} of {count}; pass each shard once")
        seen[db.meta.shard_index] = db
    if len(seen) < count:
        # count comes from a file: name the first few missing, never list them all (a header
        # claiming 10**15 shards must cost what the files given cost, not a 10**15 list)
        template, missing = shards[0].path, []
        for i in range(count):
            if i not in seen:
                missing.append(i)
                if len(missing) > 3:
                    break
        names = [shard_path(set_name(template), i, count) for i in missing[:3]]
        raise ShardSetError(f"{count - len(seen)} of {count} shards missing: "
                            f"{', '.join(repr(n) for n in names)}"
                            f"{' ...' if len(missing) > 3 else ''}; convert them with 'lmdbio "
                            f"convert SRC DST --shard I/{count}' or open all of "
                            f"{shard_glob(set_name(template), count)!r}")
    ordered = [seen[i] for i in range(count)]
    position = 0
    for db in ordered:
        m = db.meta
        if m.shard_start != position or m.shard_stop - m.shard_start != m.num_samples + len(
                m.skipped):
            raise ShardSetError(f"{db.path!r} covers listing positions {m.shard_start}.."
                                f"{m.shard_stop} with {m.num_samples} samples, expected to "
                                f"start at {position}; re-convert it")
        position = m.shard_stop
    if position != ordered[0].meta.listing_total:
        raise ShardSetError(f"the shards cover {position} of {ordered[0].meta.listing_total} "
                            f"listed files; re-convert {ordered[-1].path!r}")
    return ordered


def _describe(meta: Metadata) -> str:
    return (f"shard {meta.shard_index} of {meta.shard_count} of a listing of "
            f"{meta.listing_total} files, fingerprint {meta.source_fingerprint[:12]}")
