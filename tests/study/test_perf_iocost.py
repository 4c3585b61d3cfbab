"""The I/O cost section of the performance suite (issue #17): every way of reading it times
reads every record, the O_DIRECT reads return the record's own bytes, and its table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pandas = pytest.importorskip("pandas")

from lmdbio import Database  # noqa: E402
from lmdbio.study.bench import perf_iocost  # noqa: E402
from lmdbio.study.bench.perf_report import io_cost_table  # noqa: E402


def _spans(db_path: Path) -> list[tuple[int, int]]:
    with Database(db_path) as db:
        spans = [db.byte_range(index, index + 1) for index in range(len(db))]
    assert all(span is not None for span in spans)
    return spans  # type: ignore[return-value]


def _direct_or_skip(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        pytest.skip(f"no O_DIRECT on {path}: {exc.strerror}")


@pytest.mark.parametrize("method", perf_iocost.METHODS)
def test_every_method_reads_every_record(big_db: Path, method: str) -> None:
    fd = _direct_or_skip(big_db)
    os.close(fd)
    if "aio" in method and (refused := perf_iocost.aio_refused()) is not None:
        pytest.skip(refused)
    spans = _spans(big_db)
    shuffled = list(reversed(range(len(spans))))
    assert perf_iocost._reader(method, str(big_db), spans, shuffled)() == len(spans)


def test_direct_reads_return_the_records_bytes(big_db: Path) -> None:
    """O_DIRECT reads whole pages around a record: what comes back is the record alone, the
    same bytes a buffered read of its span gives (one at a time and a batch through AIO)."""
    import mmap

    spans = _spans(big_db)
    fd = _direct_or_skip(big_db)
    try:
        with open(big_db, "rb") as plain:
            expected = [os.pread(plain.fileno(), length, offset) for offset, length in spans]
        buffer = mmap.mmap(-1, 1 << 20)
        assert [perf_iocost._direct_read(fd, span, buffer) for span in spans] == expected
        assert any(offset % 4096 for offset, _ in spans)  # the alignment was exercised
        if perf_iocost.aio_refused() is None:
            aio = perf_iocost._KernelAio(len(spans), 8 << 20)
            try:
                assert aio.read(fd, spans[::-1]) == expected[::-1]
            finally:
                aio.close()
    finally:
        os.close(fd)


def test_table_is_median_and_range_per_method(tmp_path: Path) -> None:
    rows = [{"storage": "ssd", "method": method, "repeat": repeat, "cgroup_limit_mb": 296.0,
             "db_mb": 1184.0, "records": 100, "cpu_us_per_record": cpu, "wall_us_per_record": cpu}
            for method, values in (("random: lmdbio", (37.0, 35.0, 36.0)),
                                   ("sequential", (4.0, 16.0, 5.0)))
            for repeat, cpu in enumerate(values)]
    pandas.DataFrame(rows).to_csv(tmp_path / "iocost.csv", index=False)
    text = io_cost_table(str(tmp_path))
    assert text == (tmp_path / "iocost.md").read_text()
    assert "cgroup at 296 MB (1/4 of the 1184 MB DB); 3 repeats" in text
    assert "| ssd | random: lmdbio | 36.0 (35.0-37.0) | 36.0 (35.0-37.0) |" in text
    assert "| ssd | sequential | 5.0 (4.0-16.0) |" in text
    assert io_cost_table(str(tmp_path / "nothing")) is None


def test_direct_reads_refuse_a_buffer_too_small(big_db: Path) -> None:
    """The kernel writes an O_DIRECT read wherever it is told: a batch larger than the buffer
    is refused before anything is submitted, not read past its end."""
    import mmap

    spans = _spans(big_db)
    fd = _direct_or_skip(big_db)
    try:
        with pytest.raises(ValueError, match="does not fit the 4096-byte buffer"):
            perf_iocost._direct_read(fd, spans[0], mmap.mmap(-1, 4096))
        if perf_iocost.aio_refused() is None:
            aio = perf_iocost._KernelAio(len(spans), 4 * 4096)
            try:
                with pytest.raises(ValueError, match="more than the 16384-byte buffer"):
                    aio.read(fd, spans)
            finally:
                aio.close()
    finally:
        os.close(fd)
