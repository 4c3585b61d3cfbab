"""sshd + sshfs on loopback: real mounts, real daemons, and proof they are torn down."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmdbio.study import netfs
from lmdbio.study.netfs import NetFSError, NetFSUnavailable, SshfsMount, available
from lmdbio.prefetch import NETWORK_STREAMS, streams_for
from lmdbio.system import FsInfo, _unescape, fs_info, mounts
from lmdbio.study.pagecache import evict, residency
from lmdbio.sources import LOCAL_READ_WORKERS, NETWORK_READ_WORKERS, default_read_workers


@pytest.fixture
def netfs_ok() -> None:
    ok, why = available()
    if not ok:
        pytest.skip(why)


def sshfs_mount_points() -> list[str]:
    return [info.mount_point for info in mounts() if info.fstype == "fuse.sshfs"]


def assert_torn_down(mount: SshfsMount, mountpoint: Path) -> None:
    assert str(mountpoint) not in sshfs_mount_points()
    assert mount.sshd_pid is not None
    assert not Path(f"/proc/{mount.sshd_pid}").exists()
    assert mount.state_dir is not None and not mount.state_dir.exists()


def test_fs_info_of_local_paths() -> None:
    root = fs_info("/")
    assert isinstance(root, FsInfo) and root.mount_point == "/" and root.fstype
    assert fs_info("/proc/self").fstype == "proc"  # longest mount point wins
    assert fs_info("/no/such/dir").mount_point == "/"


def test_unescape_mountinfo_octal() -> None:
    assert _unescape(r"/mnt/a\040b\011c\134d") == "/mnt/a b\tc\\d"


def test_available_message() -> None:
    ok, why = available()
    assert isinstance(ok, bool) and "\n" not in why
    if not ok:
        assert "apt-get install -y sshfs openssh-server" in why


def test_unavailable_raises_one_line_remedy_and_starts_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = "netfs unavailable: missing sshfs; remedy: apt-get install -y sshfs openssh-server"
    monkeypatch.setattr(netfs, "available", lambda: (False, message))
    mount = SshfsMount(tmp_path)
    with pytest.raises(NetFSUnavailable, match="apt-get install -y sshfs openssh-server"):
        mount.__enter__()
    assert mount.sshd_pid is None and mount.state_dir is None


@pytest.mark.sshfs
def test_read_through_mount_is_byte_identical_and_torn_down(netfs_ok: None,
                                                            tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    mount = SshfsMount(export)
    with mount as m:
        payload = os.urandom(1 << 20)
        (export / "sub").mkdir()
        (export / "sub" / "blob.bin").write_bytes(payload)  # written on the server side
        assert (m.mountpoint / "sub" / "blob.bin").read_bytes() == payload
        info = m.fs_info
        assert info.fstype == "fuse.sshfs"
        assert info.mount_point == str(m.mountpoint)
        assert info.source.endswith(f":{export}")
        assert fs_info(m.mountpoint / "sub" / "blob.bin") == info
        # the converter reads with many threads here, few on the local disk behind it
        assert default_read_workers(m.mountpoint / "sub") == NETWORK_READ_WORKERS
        # and a prefetch reads with several streams here, one on the local disk behind it
        assert streams_for(str(m.mountpoint / "sub" / "blob.bin")) == NETWORK_STREAMS > 1
        assert streams_for(str(export / "sub" / "blob.bin")) == 1
        assert default_read_workers(export / "sub") == LOCAL_READ_WORKERS
        mountpoint = m.mountpoint
    assert_torn_down(mount, mountpoint)
    assert not mountpoint.exists()  # our own temp mountpoint is removed
    assert (export / "sub" / "blob.bin").read_bytes() == payload  # export untouched
    mount.close()  # idempotent


@pytest.mark.sshfs
def test_explicit_mountpoint_with_space_is_kept(netfs_ok: None, tmp_path: Path) -> None:
    export, target = tmp_path / "export", tmp_path / "mnt point"
    export.mkdir()
    target.mkdir()
    (export / "x").write_text("x")
    mount = SshfsMount(export, target)
    with mount as m:
        assert m.fs_info.mount_point == str(target)  # \040 decoded
        assert (target / "x").read_text() == "x"
    assert_torn_down(mount, target)
    assert target.is_dir() and not any(target.iterdir())


@pytest.mark.sshfs
def test_failed_enter_leaves_no_daemon_and_no_mount(netfs_ok: None, tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    mount = SshfsMount(missing)
    with pytest.raises(NetFSError, match="No such file"):
        mount.__enter__()
    assert mount.sshd_pid is not None  # sshd had been started before the failure
    assert_torn_down(mount, tmp_path)
    assert not any(str(missing) in p for p in sshfs_mount_points())
    with open("/proc/self/mountinfo") as f:
        assert str(missing) not in f.read()


@pytest.mark.sshfs
def test_evict_drops_fuse_client_cache(netfs_ok: None, tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "data.bin").write_bytes(os.urandom(8 << 20))
    with SshfsMount(export) as m:
        mounted = m.mountpoint / "data.bin"
        assert mounted.read_bytes()
        # auto_cache keeps the pages across residency()'s own open().
        assert residency(mounted).fraction > 0.9
        evict(mounted)
        assert residency(mounted).fraction < 0.1


@pytest.mark.sshfs
def test_a_dataset_on_the_mount_fetches_cold_batches(netfs_ok: None, tmp_path: Path) -> None:
    """Beside its prefetch on sshfs a dataset reads a batch's cold records together
    (``batch_fetch``); on the local disk behind the mount it does not; samples are the same."""
    import lmdbio
    from lmdbio.format import encode_key
    from lmdbio.residency import map_resident
    from tests.helpers import build_simple_tree, pixel_digest

    export = tmp_path / "export"
    tree = build_simple_tree(tmp_path / "tree", per_class=20, size=(160, 120))
    export.mkdir()
    lmdbio.convert(tree, export / "db.lmdb", progress=False)
    local = lmdbio.ImageFolderLMDB(export / "db.lmdb", transform=pixel_digest)
    assert not local.batch_fetch
    with SshfsMount(export) as m:
        mounted = m.mountpoint / "db.lmdb"
        remote = lmdbio.ImageFolderLMDB(mounted, transform=pixel_digest, prefetch=False)
        assert not remote.batch_fetch and remote.batch_hints  # no prefetch: hints instead
        remote.close()
        evict(mounted)
        remote = lmdbio.ImageFolderLMDB(mounted, transform=pixel_digest)
        assert remote.batch_fetch and not remote.batch_hints
        indices = [39, 0, 17, 17, -1]
        assert remote.__getitems__(indices) == [local[i] for i in indices]
        remote.close()
        # and the fetch itself, through FUSE: the records are in the client's cache on return
        with lmdbio.Database(mounted, lmdbio.EnvOptions(readahead=True)) as db:
            access = db._direct_access()
            base = db._map_start()
            assert access is not None and base is not None
            evict(mounted)
            spans = [access.locator.span(encode_key(i)) for i in (5, 33)]
            assert spans[0] is not None and spans[1] is not None
            assert not any(map_resident(base + offset, length) for offset, length in spans)
            db.fetch_records([5, 33])
            assert all(map_resident(base + offset, length) for offset, length in spans)
    local.close()
