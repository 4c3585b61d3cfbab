"""Background sequential prefetch: it reads the whole file into the page cache, stops when
asked, respects memory (cgroup) limits, and never changes what a Dataset returns."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from lmdbio import prefetch
from lmdbio.study import pagecache
from lmdbio.dataset import ImageFolderLMDB

from tests.helpers import pixel_digest, seen


def _file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def test_prefetch_reads_the_whole_file_into_the_page_cache(tmp_path: Path) -> None:
    path = _file(tmp_path / "blob", 12 << 20)
    pagecache.evict(path)
    assert pagecache.residency(path).fraction < 0.5
    fetcher = prefetch.Prefetcher(str(path), chunk_bytes=1 << 20).start()
    assert fetcher.wait(60)
    assert fetcher.error is None and fetcher.bytes_read == 12 << 20
    assert pagecache.residency(path).fraction > 0.95


@pytest.mark.parametrize("streams", [2, 3, 7])
def test_several_streams_read_the_whole_file_once(tmp_path: Path, streams: int) -> None:
    """Each stream reads its own part front to back; together every byte, none twice (an
    odd size: the last part is short)."""
    size = (5 << 20) + 4097
    path = _file(tmp_path / "blob", size)
    pagecache.evict(path)
    fetcher = prefetch.Prefetcher(str(path), chunk_bytes=1 << 20, streams=streams).start()
    assert fetcher.streams == streams and fetcher.wait(60)
    assert fetcher.error is None and fetcher.bytes_read == size
    assert pagecache.residency(path).fraction > 0.95


def test_where_splicing_is_refused_the_prefetch_reads_into_a_buffer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without splice support answers sendfile with EINVAL: the stream goes on
    with preadv, the file still read whole into the cache; any other error is the stream's."""
    import errno

    calls: list[int] = []

    def refused(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls.append(offset)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", refused)
    size = (3 << 20) + 17
    path = _file(tmp_path / "blob", size)
    pagecache.evict(path)
    fetcher = prefetch.Prefetcher(str(path), chunk_bytes=1 << 20, streams=2).start()
    assert fetcher.wait(60) and fetcher.error is None and fetcher.bytes_read == size
    assert pagecache.residency(path).fraction > 0.95
    assert sorted(calls) == [0, size - size // 2]  # one refusal per stream, then preadv

    def failing(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "sendfile", failing)
    fetcher = prefetch.Prefetcher(str(path), chunk_bytes=1 << 20).start()
    assert fetcher.wait(60) and fetcher.bytes_read == 0
    assert isinstance(fetcher.error, OSError) and fetcher.error.errno == errno.EIO


def test_without_dev_null_the_prefetch_reads_into_a_buffer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No /dev/null to send to (a bare chroot): the file is still read whole, with preadv."""
    monkeypatch.setattr(os, "devnull", str(tmp_path / "no-such-device"))
    path = _file(tmp_path / "blob", (2 << 20) + 3)
    pagecache.evict(path)
    fetcher = prefetch.Prefetcher(str(path), chunk_bytes=1 << 20).start()
    assert fetcher.wait(60) and fetcher.error is None and fetcher.bytes_read == (2 << 20) + 3
    assert pagecache.residency(path).fraction > 0.95
    assert not (tmp_path / "no-such-device").exists()


def test_the_prefetch_copies_nothing_into_the_process(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the file system splices (here: the local disk), no chunk is read into Python."""
    def copied(*args: object) -> int:
        raise AssertionError("preadv used where sendfile works")

    monkeypatch.setattr(os, "preadv", copied)
    path = _file(tmp_path / "blob", (2 << 20) + 5)
    pagecache.evict(path)
    fetcher = prefetch.Prefetcher(str(path), chunk_bytes=1 << 20).start()
    assert fetcher.wait(60) and fetcher.error is None and fetcher.bytes_read == (2 << 20) + 5
    assert pagecache.residency(path).fraction > 0.95


def test_a_stopped_prefetch_reads_nothing_more(tmp_path: Path) -> None:
    fetcher = prefetch.Prefetcher(str(_file(tmp_path / "blob", 4 << 20)), chunk_bytes=1 << 20)
    fetcher._stop.set()  # asked to stop before its first read
    fetcher.start().wait(10)
    assert fetcher.done and fetcher.bytes_read == 0


def test_missing_file_is_an_error_on_the_prefetcher_not_a_crash(tmp_path: Path) -> None:
    fetcher = prefetch.Prefetcher(str(tmp_path / "gone")).start()
    assert fetcher.wait(10)
    assert isinstance(fetcher.error, FileNotFoundError)


def test_one_prefetch_per_file_per_process_with_reference_counts(tmp_path: Path) -> None:
    path = str(_file(tmp_path / "blob", 1 << 20))
    first, second = prefetch.prefetch_files([path]), prefetch.prefetch_files([path])
    assert first[0] is second[0] and first[0].users == 2
    prefetch.stop_all(first)
    assert first[0].users == 1 and prefetch.prefetch_files([path])[0] is first[0]
    prefetch.stop_all(second)
    prefetch.stop_all(second)
    assert prefetch.prefetch_files([path])[0] is not first[0]  # forgotten with its last user


def test_budget_is_positive_and_at_most_available_memory() -> None:
    budget = prefetch.memory_budget()
    assert 0 < budget <= prefetch._meminfo_available()
    assert prefetch.fits_in_memory([]) is True


def _memory_cgroup() -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, relative = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/memory") / relative.lstrip("/")
            return folder if os.access(folder, os.W_OK) else None
    return None


@pytest.mark.root
@pytest.mark.skipif(_memory_cgroup() is None, reason="needs a writable v1 memory cgroup (root)")
def test_budget_follows_the_memory_cgroup_limit(tmp_path: Path) -> None:
    """A process in a 200 MB cgroup must not prefetch a 150 MB file, even on a big machine."""
    group = _memory_cgroup() / f"lmdbio-test-{os.getpid()}"  # type: ignore[operator]
    group.mkdir()
    sparse = tmp_path / "big.lmdb"
    with open(sparse, "wb") as handle:
        handle.truncate(150 << 20)  # apparent size is what the decision looks at
    try:
        (group / "memory.limit_in_bytes").write_text(str(200 << 20))
        code = textwrap.dedent(f"""
            import os, sys
            with open({str(group / 'cgroup.procs')!r}, "w") as handle:
                handle.write(str(os.getpid()))
            from lmdbio import prefetch
            print(prefetch.memory_budget(), prefetch.fits_in_memory([{str(sparse)!r}]))
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.split()
        assert 0 < int(out[0]) <= 200 << 20
        assert out[1] == "False"
        assert prefetch.fits_in_memory([str(sparse)])  # outside the cgroup: 24 GiB of RAM
    finally:
        group.rmdir()


def test_dataset_prefetch_modes(odd_db) -> None:
    with pytest.raises(ValueError, match="prefetch must be True, False or 'auto'"):
        ImageFolderLMDB(odd_db.db, prefetch="sometimes")
    off = ImageFolderLMDB(odd_db.db, prefetch=False)
    assert off._prefetchers == [] and not off.prefetching
    off.close()
    on = ImageFolderLMDB(odd_db.db, prefetch=True)
    assert [p.path for p in on._prefetchers] == on.files == [str(odd_db.db)]
    fetcher = on._prefetchers[0]
    users = fetcher.users
    assert fetcher.wait(30) and fetcher.bytes_read == os.path.getsize(odd_db.db)
    on.close()
    assert on._prefetchers == [] and fetcher.users == users - 1
    auto = ImageFolderLMDB(odd_db.db)  # a few hundred KB: fits, so "auto" prefetches
    assert len(auto._prefetchers) == 1
    auto.close()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_read_every_sample_while_the_parent_prefetches(odd_db, reference,  # noqa: F811
                                                               context: str) -> None:
    pagecache.evict(odd_db.db)
    dataset = ImageFolderLMDB(odd_db.db, transform=pixel_digest, prefetch=True)
    loader = DataLoader(dataset, batch_size=None, shuffle=True, num_workers=2,
                        multiprocessing_context=context,
                        generator=torch.Generator().manual_seed(1))
    assert seen(loader) == reference
    dataset.close()


def test_auto_reads_ahead_and_prefetches_only_what_fits(odd_db,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """"auto" = one decision from the file size and the memory budget: both on when the DB
    fits, both off when it does not (explicit settings always win)."""
    import lmdbio.dataset as dataset_module

    fits = ImageFolderLMDB(odd_db.db)
    assert fits.database._shared.options.readahead is True and len(fits._prefetchers) == 1
    fits.close()
    monkeypatch.setattr(dataset_module, "fits_in_memory", lambda files: False)
    big = ImageFolderLMDB(odd_db.db)
    big[0]
    assert big.database._shared.options.readahead is False and big._prefetchers == []
    big.close()
    forced = ImageFolderLMDB(odd_db.db, readahead=True, prefetch=True)
    forced[0]
    assert forced.database._shared.options.readahead is True and len(forced._prefetchers) == 1
    forced.close()
    with pytest.raises(ValueError, match="readahead must be True, False or 'auto'"):
        ImageFolderLMDB(odd_db.db, readahead="yes")
