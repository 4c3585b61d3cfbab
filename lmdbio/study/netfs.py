"""A network file system stand-in: sshd on 127.0.0.1 plus an sshfs (FUSE) mount.

Benchmarks of "LMDB on a network file system" need a real one: on NFS every
page-cache miss becomes a request over TCP, so random reads pay a round trip
each while large sequential reads amortise it.  Test machines often have no
kernel NFS client, but ``/dev/fuse`` works, so we export a local directory
through a private ``sshd`` bound to loopback and mount it with ``sshfs``.
Every cache-missing read is then an SFTP request over a TCP (ssh) connection,
which reproduces the latency/throughput shape that matters.

Stdlib only.  Requires ``apt-get install -y sshfs openssh-server``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from lmdbio.study.service import Service
from lmdbio.system import FsInfo, fs_info, mounts

__all__ = ["available", "NetFSUnavailable", "NetFSError",
           "SshfsMount", "SSHFS_OPTIONS"]

PathLike = Union[str, "os.PathLike[str]"]
SSHD = "/usr/sbin/sshd"  # sshd refuses to run unless started by absolute path
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0

# sshfs/ssh options, chosen to behave like an NFS client mount:
# - auto_cache: keep the FUSE page cache across open() while mtime/size are
#   unchanged (NFS close-to-open semantics).  sshfs' default drops the cache on
#   every open, so a "warm" run after reopening an LMDB env would be cold.
#   dir_cache stays at its default (yes, 20 s), like NFS attribute caching.
# - max_conns default (1): one TCP connection, like NFS without nconnect.
# - Ciphers: AES-GCM uses AES-NI, so we measure the request path, not crypto.
# - reconnect is left off (sshfs default) so a dead server fails loudly.
SSHFS_OPTIONS: tuple[str, ...] = (
    "auto_cache",
    "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "BatchMode=yes",
    "LogLevel=ERROR", "ServerAliveInterval=15",
    "Ciphers=aes128-gcm@openssh.com",  # one value: commas separate sshfs options
)


class NetFSUnavailable(RuntimeError):
    """sshfs/sshd/ssh-keygen or /dev/fuse is missing on this machine."""


class NetFSError(RuntimeError):
    """sshd or sshfs failed to start or to mount."""


def available() -> tuple[bool, str]:
    """Whether an sshfs mount can be made here, and a one-line reason if not."""
    missing = [name for name, ok in (
        ("sshfs", shutil.which("sshfs")), ("sshd", os.access(SSHD, os.X_OK)),
        ("ssh-keygen", shutil.which("ssh-keygen")), ("/dev/fuse", os.path.exists("/dev/fuse")),
    ) if not ok]
    if missing:
        return False, (f"netfs unavailable: missing {', '.join(missing)}; "
                       "remedy: apt-get install -y sshfs openssh-server (and /dev/fuse)")
    return True, "sshfs, sshd, ssh-keygen and /dev/fuse present"


def _is_sshfs_mounted(mountpoint: Path) -> bool:
    return any(m.mount_point == str(mountpoint) and m.fstype == "fuse.sshfs"
               for m in mounts())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: Optional[subprocess.Popen]) -> None:
    """Terminate, wait, then kill: never leave the process running."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _Resources:
    """Everything a mount started, released by ``close`` (also via finalizer).

    Kept separate from :class:`SshfsMount` so ``weakref.finalize`` can hold it
    without keeping the mount object alive.
    """

    def __init__(self) -> None:
        self.state_dir: Optional[Path] = None
        self.own_mountpoint: Optional[Path] = None
        self.mountpoint: Optional[Path] = None
        self.sshd: Optional[subprocess.Popen] = None
        self.sshfs: Optional[subprocess.Popen] = None
        # Stop functions of helpers between sshfs and the server (relays, listeners), run
        # last-started first once sshfs is gone.  They must not raise nor hold the mount.
        self.cleanups: list[Callable[[], None]] = []

    def close(self) -> None:
        if self.mountpoint is not None and _is_sshfs_mounted(self.mountpoint):
            # umount -l is the last resort: it detaches even while files are open.
            for cmd in (["fusermount", "-u"], ["fusermount3", "-u"], ["umount", "-l"]):
                if shutil.which(cmd[0]):
                    subprocess.run([*cmd, str(self.mountpoint)], capture_output=True)
                if not _is_sshfs_mounted(self.mountpoint):
                    break
        if self.sshfs is not None:
            try:  # sshfs exits by itself once unmounted; stopping it is the backstop
                self.sshfs.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _stop(self.sshfs)
        while self.cleanups:
            self.cleanups.pop()()
        if self.sshd is not None and self.sshd.poll() is None:
            try:  # its own session: also ends per-connection children
                os.killpg(self.sshd.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _stop(self.sshd)
        if self.own_mountpoint is not None and not _is_sshfs_mounted(self.own_mountpoint):
            # rmdir, never rmtree: a still-mounted point would delete the export.
            try:
                self.own_mountpoint.rmdir()
            except FileNotFoundError:
                pass
            self.own_mountpoint = None
        if self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None
        self.mountpoint = None


class SshfsMount(Service):
    """Mount ``export_dir`` via sshd on 127.0.0.1 + sshfs, as a context manager.

    ``with SshfsMount("/data/export") as m: read(m.mountpoint / "x.lmdb")``.
    ``extra_options`` are appended to :data:`SSHFS_OPTIONS` (e.g.
    ``["max_conns=4"]``).  Everything started is torn down by ``close()``/exit,
    by a garbage-collection/atexit finalizer, and on a failed enter.
    """

    def __init__(self, export_dir: PathLike, mountpoint: Optional[PathLike] = None, *,
                 port: Optional[int] = None, extra_options: Sequence[str] = ()) -> None:
        self.export_dir = Path(export_dir).absolute()
        self._requested_mountpoint = None if mountpoint is None else Path(mountpoint)
        self.port = port
        self.extra_options = tuple(extra_options)
        self.mountpoint: Optional[Path] = None
        self.state_dir: Optional[Path] = None  # kept after close, for checks
        self.sshd_pid: Optional[int] = None
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.close)

    @property
    def fs_info(self) -> FsInfo:
        """Mount type/source/options of the live mount, to label benchmark results."""
        if self.mountpoint is None:
            raise NetFSError("not mounted")
        return fs_info(self.mountpoint)

    def start(self) -> None:
        """Bring sshd (or what a subclass puts there) and the mount up (``with`` does it)."""
        ok, why = self._available()
        if not ok:
            raise NetFSUnavailable(why)
        self._start()

    def close(self) -> None:
        """Unmount, stop sshfs and sshd, remove temp dirs.  Idempotent."""
        self._res.close()
        self.mountpoint = None

    def _available(self) -> tuple[bool, str]:
        return available()

    def _client_port(self, sshd_port: int) -> int:
        """The port sshfs connects to (a subclass may put a relay in front of sshd)."""
        return sshd_port

    def _start(self) -> None:
        res = self._res
        res.state_dir = self.state_dir = Path(tempfile.mkdtemp(prefix="lmdbio-netfs-"))
        state = res.state_dir  # mkdtemp makes it 0700: keys must stay private
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-t", "ed25519", "-N", "", "-q", "-f",
                            str(state / key)], check=True, capture_output=True)
        shutil.copy(state / "client_key.pub", state / "authorized_keys")
        port = self.port or _free_port()
        (state / "sshd_config").write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {state / 'host_key'}",
            f"AuthorizedKeysFile {state / 'authorized_keys'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            # Keys only (root logs in as itself); StrictModes would reject /tmp paths.
            "PermitRootLogin prohibit-password", "StrictModes no",
            f"PidFile {state / 'sshd.pid'}", "Subsystem sftp internal-sftp",
            "LogLevel ERROR", ""]))
        if os.geteuid() == 0:  # root sshd chroots its pre-auth child into /run/sshd
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with open(state / "sshd.log", "wb") as sshd_log:
            res.sshd = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(state / "sshd_config")], stdin=subprocess.DEVNULL,
                stdout=sshd_log, stderr=subprocess.STDOUT, start_new_session=True)
        self.sshd_pid = res.sshd.pid
        self._wait_for_sshd(port)
        options = ",".join([f"IdentityFile={state / 'client_key'}",
                            *SSHFS_OPTIONS, *self.extra_options])
        self._mount(["-p", str(self._client_port(port)), "-o", options,
                     f"{pwd.getpwuid(os.geteuid()).pw_name}@127.0.0.1:{self.export_dir}"])

    def _mount(self, sshfs_args: Sequence[str]) -> None:
        """Run ``sshfs -f ARGS MOUNTPOINT`` and wait until the mount answers."""
        res = self._res
        assert res.state_dir is not None
        if self._requested_mountpoint is None:
            res.own_mountpoint = Path(tempfile.mkdtemp(prefix="lmdbio-sshfs-mnt-"))
        mountpoint = (self._requested_mountpoint or res.own_mountpoint).resolve()
        res.mountpoint = mountpoint
        # -f: stay in the foreground so we own the process and can stop it.
        with open(res.state_dir / "sshfs.log", "wb") as sshfs_log:
            res.sshfs = subprocess.Popen(
                ["sshfs", "-f", *sshfs_args, str(mountpoint)],
                stdin=subprocess.DEVNULL, stdout=sshfs_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._mount_answers(mountpoint):
            if res.sshfs.poll() is not None or time.monotonic() > deadline:
                raise NetFSError(f"sshfs failed to mount {self.export_dir} on {mountpoint}: "
                                 + self._log("sshfs.log"))
            time.sleep(0.05)
        self.mountpoint = mountpoint

    def _mount_answers(self, mountpoint: Path) -> bool:
        """Mounted and serving: sshfs mounts *before* it checks the remote dir,
        so only a successful stat (a real SFTP round trip) proves the mount."""
        if not _is_sshfs_mounted(mountpoint):
            return False
        try:
            os.stat(mountpoint)
        except OSError:  # e.g. ENOTCONN: sshfs gave up; poll() will show it
            return False
        return self._res.sshfs is not None and self._res.sshfs.poll() is None

    def _wait_for_sshd(self, port: int) -> None:
        """Wait for sshd's banner on the port, failing with its log if it dies."""
        assert self._res.sshd is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._res.sshd.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                    if sock.recv(8).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise NetFSError(f"sshd did not start on 127.0.0.1:{port}: " + self._log("sshd.log"))

    def _log(self, name: str) -> str:
        assert self.state_dir is not None
        try:
            text = (self.state_dir / name).read_text(errors="replace").strip()
        except OSError:
            text = ""
        return " | ".join(text.splitlines()[-5:]) or "(no output)"
