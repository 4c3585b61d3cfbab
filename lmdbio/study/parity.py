"""Check, sample by sample, that an LMDB database reads back exactly as ImageFolder does."""

from __future__ import annotations

import os
from dataclasses import dataclass

from lmdbio.study.conditions import at_least

__all__ = ["ParityError", "ParityReport", "check_conversion", "compare_with_imagefolder"]


class ParityError(RuntimeError):
    """A database that fails its checksums or does not read back as ImageFolder reads its
    source: a notebook must stop there, not go on to measure it."""


@dataclass(frozen=True)
class ParityReport:
    compared: int
    identical: int
    same_classes: bool
    same_targets: bool
    mismatches: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return self.same_classes and self.same_targets and self.compared == self.identical

    def __str__(self) -> str:
        return (f"{self.identical} of {self.compared} samples identical (pixels and targets); "
                f"classes {'match' if self.same_classes else 'DIFFER'}, "
                f"target lists {'match' if self.same_targets else 'DIFFER'}")


def compare_with_imagefolder(split_dir: str | os.PathLike[str], lmdb_path: str | os.PathLike[str],
                             limit: int = 0) -> ParityReport:
    """Compare ``ImageFolder(split_dir)`` with ``ImageFolderLMDB(lmdb_path)``: classes, targets
    and, for the first ``limit`` samples (0: all), the decoded RGB pixels."""
    import numpy
    from torchvision.datasets import ImageFolder

    from lmdbio.dataset import ImageFolderLMDB

    at_least("parity_limit", limit, 0)  # -1 compared nothing and said all were identical
    reference = ImageFolder(os.fspath(split_dir))
    candidate = ImageFolderLMDB(lmdb_path)
    try:
        count = min(len(reference), len(candidate))
        count = min(count, limit) if limit else count
        mismatches = []
        for index in range(count):
            (a, ta), (b, tb) = reference[index], candidate[index]
            if ta != tb or a.size != b.size or not numpy.array_equal(numpy.asarray(a),
                                                                     numpy.asarray(b)):
                mismatches.append(index)
        return ParityReport(count, count - len(mismatches),
                            reference.classes == candidate.classes,
                            reference.targets == candidate.targets, tuple(mismatches[:20]))
    finally:
        candidate.close()


def check_conversion(split_dir: str | os.PathLike[str], lmdb_path: str | os.PathLike[str],
                     limit: int = 0) -> ParityReport:
    """``lmdbio.verify`` and ``compare_with_imagefolder``, each result printed; a
    ``ParityError`` (naming the database and the first difference) when either fails."""
    from lmdbio.tools import verify

    verified = verify(lmdb_path)
    print("checksums OK:", verified.ok)
    parity = compare_with_imagefolder(split_dir, lmdb_path, limit=limit)
    print(parity)
    if not verified.ok or not parity.ok:
        first = verified.problems[0] if not verified.ok else str(parity)
        raise ParityError(f"{os.fspath(lmdb_path)!r} does not read back as "
                          f"ImageFolder({os.fspath(split_dir)!r}) does ({first}); convert it "
                          "again (overwrite=True)")
    return parity
