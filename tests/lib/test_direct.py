"""Records read with one pread (readahead off): the same bytes as through the map, none of the
value's pages touched to find them (lmdbio.btree walks LMDB's own pages), one-time layout
check, and every way it must fall back to the map or fail in one typed line."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import time
from pathlib import Path

import pytest

import lmdbio
from lmdbio import Database, EnvOptions, btree
from lmdbio.btree import ValueLocator
from lmdbio.errors import CorruptRecordError
from lmdbio.format import RECORD_HEADER_SIZE, encode_key
from lmdbio.study import pagecache

from tests.helpers import build_simple_tree


def _through_map(path: Path) -> list[tuple[int, bytes]]:
    with Database(path, EnvOptions(readahead=True)) as db:
        return [db.get(i) for i in range(len(db))]


def test_direct_reads_return_what_the_map_holds(big_db: Path) -> None:
    expected = _through_map(big_db)
    with Database(big_db, EnvOptions(readahead=False)) as db:
        assert [db.get(i) for i in range(len(db))] == expected
        access = db._direct_access()
        assert access is not None and access.file.fd is not None


def test_locating_records_touches_only_the_tree(big_db: Path) -> None:
    """liblmdb's cursor reads a value's first page to position on it (one synchronous read per
    cold record); the locator reads branch and leaf pages only."""
    with Database(big_db, EnvOptions(readahead=False)) as db:
        db.close()  # opening read the header; now nothing of the file is mapped
        for _ in range(2):  # readahead an earlier reader left in flight lands, then goes too
            pagecache.evict(big_db)
            time.sleep(0.2)
        db.get(0)  # maps it, confirms the layout with record 0 (through the map), preads it
        env, samples, _ = db._handles()
        page = env.stat()["psize"]
        with env.begin(db=samples) as txn:
            stat = txn.stat(samples)
        tree_pages = stat["branch_pages"] + stat["leaf_pages"]
        locator = db._direct_access().locator  # type: ignore[union-attr]
        before = pagecache.residency(big_db).bytes_resident
        spans = [locator.span(encode_key(i)) for i in range(len(db))]
        grown = pagecache.residency(big_db).bytes_resident - before
        assert grown <= tree_pages * page, (grown, tree_pages)
        with env.begin(db=samples, buffers=True) as txn:
            views = [txn.get(encode_key(i)) for i in range(len(db))]
            assert spans == [(db._map_offset(v), len(v)) for v in views]
        assert locator.span(encode_key(len(db) + 5)) is None
        assert locator.span(b"\xff" * 8) is None and locator.span(b"") is None


def test_leaves_kept_and_dropped_still_place_every_record(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaf pages are kept after their first read (at most ``_LEAVES_KEPT``, oldest dropped):
    every record is still placed where liblmdb's own view of it lies, in any order."""
    monkeypatch.setattr(btree, "_LEAVES_KEPT", 2)
    tree = build_simple_tree(tmp_path / "tree", per_class=400, size=(80, 60))
    lmdbio.convert(tree, tmp_path / "db.lmdb", progress=False)
    with Database(tmp_path / "db.lmdb", EnvOptions(readahead=False)) as db:
        db.get(0)
        env, samples, _ = db._handles()
        with env.begin(db=samples) as txn:
            assert txn.stat(samples)["leaf_pages"] > 4  # more leaves than are kept
        locator = db._direct_access().locator  # type: ignore[union-attr]
        with env.begin(db=samples, buffers=True) as txn:
            expected = [(db._map_offset(v), len(v))
                        for v in (txn.get(encode_key(i)) for i in range(len(db)))]
        order = list(range(len(db)))
        for shuffle in (False, True):
            if shuffle:
                random.Random(0).shuffle(order)
            assert [locator.span(encode_key(i)) for i in order] == [expected[i] for i in order]
            assert 0 < len(btree._leaves) <= 2
        assert [db.get(i)[1] for i in order[:50]] == [_through_map_one(db, i) for i in order[:50]]


def _through_map_one(db: Database, index: int) -> bytes:
    env, samples, _ = db._handles()
    with env.begin(db=samples) as txn:
        return bytes(txn.get(encode_key(index)))[RECORD_HEADER_SIZE:]


def test_a_layout_that_does_not_check_out_turns_direct_reads_off(big_db: Path) -> None:
    expected = _through_map(big_db)
    with Database(big_db, EnvOptions(readahead=False)) as db:
        db._map_offset = lambda view: -1  # type: ignore[method-assign]  # "the map disagrees"
        assert [db.get(i) for i in range(len(db))] == expected
        assert db._direct == (os.getpid(), None)
        db.will_need_records(range(len(db)))  # no access: hints do nothing, raise nothing


def test_pages_that_do_not_check_out_are_not_followed(big_db: Path) -> None:
    """A locator pointed at the wrong pages (a foreign layout, a damaged tree) answers None
    instead of reading anywhere else."""
    with Database(big_db, EnvOptions(readahead=False)) as db:
        db.get(0)
        good = db._direct_access().locator  # type: ignore[union-attr]
        key = encode_key(7)
        assert good.span(key) is not None
        for root, depth in ((good.root + 1, good.depth), (good.root, good.depth + 1),
                            (good.last_page + 10, good.depth), (0, good.depth)):
            bad = ValueLocator(good.map_base, good.page_size, root, depth, good.last_page)
            assert bad.span(key) is None, (root, depth)


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
        access = db._direct_access()  # (the map is not found under the name's new inode,
        assert access is None or access.file.fd is None  # or the descriptor is refused)


def _read_all_in_child(path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with Database(path, EnvOptions(readahead=False)) as db:
        queue.put([db.get(i) for i in range(len(db))])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_each_process_opens_its_own_descriptor(big_db: Path, method: str) -> None:
    expected = _through_map(big_db)
    with Database(big_db, EnvOptions(readahead=False)) as db:
        db.get(0)
        parent_fd = db._direct_access().file.fd  # type: ignore[union-attr]
        context = multiprocessing.get_context(method)
        queue = context.Queue()
        child = context.Process(target=_read_all_in_child, args=(str(big_db), queue))
        child.start()
        assert queue.get(timeout=60) == expected
        child.join(60)
        assert child.exitcode == 0
        assert db._direct_access().file.fd == parent_fd  # type: ignore[union-attr]
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


def test_a_place_that_heads_no_overflow_run_is_not_read(big_db: Path) -> None:
    """A leaf node pointing into the middle of a value's pages (a damaged or hostile tree):
    the page there is no overflow run's first page, so the direct read refuses it and the
    map (liblmdb) answers, whatever the bytes there would pass for."""
    expected = _through_map(big_db)
    with Database(big_db, EnvOptions(readahead=False)) as db:
        db.get(0)
        access = db._direct_access()
        assert access is not None
        key = encode_key(7)
        offset, length = access.locator.span(key)  # type: ignore[misc]
        page = access.locator.page_size
        with open(big_db, "rb") as handle:
            handle.seek(offset - 16)
            header = handle.read(16)
            handle.seek(offset - 16 + page)
            inside = handle.read(16)
        assert access.locator.heads((offset, length), header)
        assert not access.locator.heads((offset + page, length - page), inside)
        assert not access.locator.heads((offset, length), header[:8] + b"\0" * 8)  # no flag
        assert not access.locator.heads((offset, length + 64 * page), header)  # run too short
        with db._handles()[0].begin(db=db._handles()[1]) as txn:
            assert bytes(access.read(key)) == txn.get(key)  # type: ignore[arg-type]
        access.locator.span = lambda k: (offset + page, length - page)  # type: ignore
        assert access.read(key) is None
        assert db.get(7) == expected[7]  # through the map
