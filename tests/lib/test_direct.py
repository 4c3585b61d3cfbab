"""Records read with one pread (readahead off): the same bytes as through the map, none of the
value's pages touched to find it, one-time layout check, and every way it must fall back to the
map or fail in one typed line."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

import lmdbio
from lmdbio import Database, EnvOptions
from lmdbio.direct import DirectReads, value_span
from lmdbio.errors import CorruptRecordError
from lmdbio.format import encode_key
from lmdbio.study import pagecache

from tests.helpers import build_simple_tree


@pytest.fixture(scope="module")
def big_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 records of ~10-20 KB: every value on overflow pages, like real JPEGs."""
    root = tmp_path_factory.mktemp("direct")
    tree = build_simple_tree(root / "tree", per_class=30, size=(160, 120))
    lmdbio.convert(tree, root / "db.lmdb", progress=False)
    return root / "db.lmdb"


def _through_map(path: Path) -> list[tuple[int, bytes]]:
    with Database(path, EnvOptions(readahead=True)) as db:
        return [db.get(i) for i in range(len(db))]


def test_direct_reads_return_what_the_map_holds(big_db: Path) -> None:
    expected = _through_map(big_db)
    with Database(big_db, EnvOptions(readahead=False)) as db:
        assert [db.get(i) for i in range(len(db))] == expected
        assert db._direct is not None and db._direct.confirmed and db._direct.fd is not None


def test_locating_a_record_touches_none_of_its_pages(big_db: Path) -> None:
    with Database(big_db, EnvOptions(readahead=False)) as db:
        env, samples, _ = db._handles()
        page = env.stat()["psize"]
        with env.begin(db=samples, buffers=True) as txn:
            spans = [value_span(txn.cursor(), encode_key(i), page) for i in range(len(db))]
        assert all(span is not None for span in spans)
        db.close()
        pagecache.evict(big_db)
        db.get(0)  # opens the map, reads the tree and record 0 (the layout check)
        before = pagecache.residency(big_db).bytes_resident
        env, samples, _ = db._handles()  # the reopened environment
        with env.begin(db=samples, buffers=True) as txn:
            assert [value_span(txn.cursor(), encode_key(i), page)
                    for i in range(len(db))] == spans
        # only leaf/branch pages may have been read: far less than the records' bytes
        grown = pagecache.residency(big_db).bytes_resident - before
        assert grown < sum(length for _, length in spans) / 4
        with env.begin(db=samples, buffers=True) as txn:
            assert value_span(txn.cursor(), encode_key(len(db) + 5), page) is None


def test_a_layout_that_does_not_check_out_turns_direct_reads_off(big_db: Path) -> None:
    expected = _through_map(big_db)
    with Database(big_db, EnvOptions(readahead=False)) as db:
        env = db._handles()[0]
        db._direct = DirectReads(str(big_db), env.stat()["psize"], db._shared.identity)
        db._map_offset = lambda view: -1  # type: ignore[method-assign]  # "the map disagrees"
        assert [db.get(i) for i in range(len(db))] == expected
        assert db._direct.fd is None and not db._direct.confirmed


def test_a_name_that_now_holds_another_file_is_not_read(big_db: Path, tmp_path: Path) -> None:
    """Published by rename over an open database: preads must not pair the new file's bytes
    with the old map (the identity check); the map, still the old file, answers."""
    path = tmp_path / "db.lmdb"
    shutil.copyfile(big_db, path)
    expected = _through_map(path)
    with Database(path, EnvOptions(readahead=False)) as db:
        db._handles()
        other = tmp_path / "other.lmdb"
        tree = build_simple_tree(tmp_path / "tree2", per_class=30, size=(150, 110))
        lmdbio.convert(tree, other, progress=False)
        os.replace(other, path)
        assert [db.get(i) for i in range(len(db))] == expected
        assert db._direct is not None and db._direct.fd is None


def _read_all_in_child(path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with Database(path, EnvOptions(readahead=False)) as db:
        queue.put([db.get(i) for i in range(len(db))])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_each_process_opens_its_own_descriptor(big_db: Path, method: str) -> None:
    expected = _through_map(big_db)
    with Database(big_db, EnvOptions(readahead=False)) as db:
        db.get(0)
        parent_fd = db._direct.fd  # type: ignore[union-attr]
        context = multiprocessing.get_context(method)
        queue = context.Queue()
        child = context.Process(target=_read_all_in_child, args=(str(big_db), queue))
        child.start()
        assert queue.get(timeout=60) == expected
        child.join(60)
        assert child.exitcode == 0
        assert db._direct is not None and db._direct.fd == parent_fd
        os.fstat(parent_fd)  # the child closing its copy left the parent's open


def test_a_read_error_is_one_typed_line(big_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Database(big_db, EnvOptions(readahead=False)) as db:
        db.get(0)

        def failing(*_: object) -> bytes:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "pread", failing)
        with pytest.raises(CorruptRecordError) as caught:
            db.get(3)
        message = str(caught.value)
        assert "\n" not in message and "record 3" in message and "Input/output error" in message
        assert "check the storage" in message
