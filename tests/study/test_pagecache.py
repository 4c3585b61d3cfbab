"""Page-cache eviction and residency are measured for real: the kernel drops the pages."""

from __future__ import annotations

import mmap
import os
import warnings
from pathlib import Path

import pytest

from lmdbio.study.pagecache import Residency, ResidencyError, evict, evict_and_check, residency
from lmdbio.study import pagecache

SIZE = 8 * 1024 * 1024


def write_file(path: Path, size: int = SIZE, *, sync: bool = True) -> Path:
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        if sync:
            f.flush()
            os.fsync(f.fileno())
    return path


def test_read_file_is_resident_and_evict_drops_it(tmp_path: Path) -> None:
    data = write_file(tmp_path / "data.bin")
    assert data.read_bytes()  # pull every page in
    warm = residency(data)
    assert (warm.files, warm.bytes_total) == (1, SIZE)
    assert warm.fraction > 0.9

    evict(data)
    assert residency(data).fraction < 0.1


def test_read_through_brings_a_tree_back_after_evict(tmp_path: Path) -> None:
    """The warm side of a benchmark: every regular file of a tree read back into the cache."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    files = [write_file(tmp_path / "a" / "one.bin", SIZE // 2),
             write_file(tmp_path / "a" / "b" / "two.bin", SIZE // 4 + 1)]
    evict(tmp_path)
    assert residency(tmp_path).fraction < 0.1
    pagecache.read_through(tmp_path, chunk=1 << 20)
    assert residency(tmp_path).fraction > 0.9
    evict(files[0])
    assert pagecache.read_through(files[0]) == SIZE // 2  # one file, the default chunk
    assert residency(files[0]).fraction > 0.9


def test_evict_syncs_dirty_pages_first(tmp_path: Path) -> None:
    # Without the fsync inside evict(), DONTNEED would keep these dirty pages.
    data = write_file(tmp_path / "dirty.bin", sync=False)
    assert evict_and_check(data).fraction < 0.1


def test_partial_last_page_is_not_overcounted(tmp_path: Path) -> None:
    data = write_file(tmp_path / "odd.bin", size=10_000)
    data.read_bytes()
    assert residency(data) == Residency(files=1, bytes_total=10_000, bytes_resident=10_000)


def test_directory_counts_regular_files_recursively_without_symlinks(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    write_file(tree / "a.bin", SIZE // 2)
    write_file(tree / "sub" / "b.bin", SIZE // 4)
    outside = write_file(tmp_path / "outside.bin", SIZE)
    (tree / "link.bin").symlink_to(outside)
    (tree / "sub" / "loop").symlink_to(tree, target_is_directory=True)
    for f in (tree / "a.bin", tree / "sub" / "b.bin", outside):
        f.read_bytes()

    warm = residency(tree)
    assert (warm.files, warm.bytes_total) == (2, SIZE // 2 + SIZE // 4)
    assert warm.fraction > 0.9

    evict(tree)
    assert residency(tree).fraction < 0.1
    assert residency(outside).fraction > 0.9  # symlink target outside the tree untouched


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.touch()
    evict(empty)
    measured = residency(empty)
    assert measured == Residency(files=1, bytes_total=0, bytes_resident=0)
    assert measured.fraction == 0.0


def test_unmappable_file_raises_clear_oserror(tmp_path: Path) -> None:
    # Root can read anything, so provoke the failure with a directory (mmap: ENODEV).
    with pytest.raises(ResidencyError, match="cannot measure page-cache residency") as info:
        pagecache._resident_bytes(tmp_path)
    assert isinstance(info.value, OSError)
    assert info.value.filename == str(tmp_path)


def test_missing_path_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        residency(tmp_path / "nope")


def test_mapped_pages_survive_evict_so_callers_must_close_envs(tmp_path: Path) -> None:
    """Why every LMDB env must be closed first: mapped pages are not dropped."""
    data = write_file(tmp_path / "mapped.bin")
    with open(data, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        checksum = sum(mapped[i] for i in range(0, SIZE, mmap.PAGESIZE))  # touch all pages
        with pytest.warns(RuntimeWarning, match="still in page cache"):
            still_mapped = evict_and_check(data)
        assert still_mapped.fraction > 0.9
    assert checksum >= 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning once the map is gone
        assert evict_and_check(data).fraction < 0.1
