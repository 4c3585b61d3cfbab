"""Check, sample by sample, that an LMDB database reads back exactly as ImageFolder does."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["ParityReport", "compare_with_imagefolder"]


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
