"""A network file system with a chosen round-trip time: sshfs through a :mod:`~lmdbio.study.relay`.

``LatencyMount(export, one_way_ms=0.5)`` mounts ``export`` with sshfs, and every byte between
the sshfs client and the SFTP server waits 0.5 ms in each direction in a relay on 127.0.0.1
(configured added RTT = 1 ms; what you get is measured by :mod:`~lmdbio.study.probe_fs`).
Two transports:

- ``"direct"`` (default): ``sshfs -o directport=PORT`` speaks SFTP over plain TCP to
  ``sftp-server`` (one per connection, the socket as its stdin/stdout, started by
  :class:`SftpListener`).  No ssh, no encryption: closest to NFS's request path.
- ``"ssh"``: the :class:`~lmdbio.study.netfs.SshfsMount` path (private sshd, AES-GCM) with the
  relay between sshfs's ssh and sshd.

``relay=False`` gives the same mount without the relay (the baseline the relay is compared
with).  Teardown is SshfsMount's: on exit, on a failed enter, on KeyboardInterrupt inside the
with-block, and by a finalizer; the relay runs in a child process that also exits when we die.

Stdlib only.  Requires ``apt-get install -y sshfs openssh-sftp-server`` (and
``openssh-server`` for ``transport="ssh"``).
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO, Optional, Sequence

from lmdbio.study.netfs import PathLike, SshfsMount, _stop, available
from lmdbio.study.relay import SPIN_US, RelayProcess, RelayStats
from lmdbio.study.service import Service

__all__ = ["LatencyMount", "SftpListener", "SFTP_SERVER", "latency_available"]

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
TRANSPORTS = ("direct", "ssh")
DIRECT_OPTIONS = ("auto_cache",)  # as netfs.SSHFS_OPTIONS, minus what only ssh reads


def latency_available(transport: str = "direct") -> tuple[bool, str]:
    """Whether a :class:`LatencyMount` with ``transport`` can be made here, and why not."""
    if transport == "ssh":
        return available()
    missing = [name for name, ok in (
        ("sshfs", shutil.which("sshfs")), ("sftp-server", os.access(SFTP_SERVER, os.X_OK)),
        ("/dev/fuse", os.path.exists("/dev/fuse"))) if not ok]
    if missing:
        return False, (f"latency fs unavailable: missing {', '.join(missing)}; "
                       "remedy: apt-get install -y sshfs openssh-sftp-server (and /dev/fuse)")
    return True, "sshfs, sftp-server and /dev/fuse present"


class SftpListener(Service):
    """TCP listener on 127.0.0.1 running one ``sftp-server`` per connection, in ``root``.

    What sshd does for the sftp subsystem, without ssh.  sftp-server resolves relative paths
    against its working directory (``root``) and absolute ones as given; it runs as us.
    """

    def __init__(self, root: PathLike, log: Optional[IO[bytes]] = None) -> None:
        self.root, self.log = Path(root), log
        self.port = 0
        self.pids: list[int] = []
        self._procs: list[subprocess.Popen] = []
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()

    def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        self._sock, self.port = sock, sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name=f"SftpListener-{self.port}",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            if not select.select([self._sock], [], [], 0.2)[0]:
                continue
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with conn:  # the child keeps its own copy of the descriptor
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    proc = subprocess.Popen(
                        [SFTP_SERVER, "-e", "-l", "ERROR"], cwd=self.root, stdin=conn.fileno(),
                        stdout=conn.fileno(), stderr=self.log or subprocess.DEVNULL,
                        start_new_session=True)  # Ctrl-C reaches us, not it mid-teardown
                except OSError:  # e.g. root missing: sshfs sees the connection close
                    continue
            self._procs.append(proc)
            self.pids.append(proc.pid)

    def close(self) -> None:
        """Stop listening, stop every sftp-server.  Idempotent; never raises."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._sock is not None:
            self._sock.close()
        for proc in self._procs:
            _stop(proc)


class LatencyMount(SshfsMount):
    """sshfs mount of ``export_dir`` with ``one_way_ms`` added each way (see module doc).

    ``relay_spin_us``: see :class:`~lmdbio.study.relay.DelayRelay` (``spin_us``).
    ``configured_rtt_ms`` is ``2 * one_way_ms``; ``relay_stats`` (bytes, relay CPU seconds)
    is set once closed; ``label`` is what a result row should record about the mount.
    """

    def __init__(self, export_dir: PathLike, mountpoint: Optional[PathLike] = None, *,
                 one_way_ms: float = 0.0, bandwidth_mbps: Optional[float] = None,
                 transport: str = "direct", relay: bool = True,
                 relay_spin_us: float = SPIN_US, extra_options: Sequence[str] = ()) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        if not relay and (one_way_ms or bandwidth_mbps):
            raise ValueError("a delay or bandwidth cap needs relay=True")
        super().__init__(export_dir, mountpoint, extra_options=extra_options)
        self.one_way_ms, self.bandwidth_mbps = float(one_way_ms), bandwidth_mbps
        self.transport, self.use_relay, self.relay_spin_us = transport, relay, relay_spin_us
        self.relay_pid: Optional[int] = None
        self.sftp_server_pids: list[int] = []
        self.listener_port: Optional[int] = None
        self._relay: Optional[RelayProcess] = None

    @property
    def configured_rtt_ms(self) -> float:
        return 2 * self.one_way_ms

    @property
    def relay_stats(self) -> Optional[RelayStats]:
        return None if self._relay is None else self._relay.stats

    @property
    def label(self) -> dict[str, object]:
        return {"transport": self.transport, "relay": self.use_relay,
                "configured_rtt_ms": self.configured_rtt_ms,
                "bandwidth_mbps": self.bandwidth_mbps}

    def _available(self) -> tuple[bool, str]:
        return latency_available(self.transport)

    def _client_port(self, server_port: int) -> int:
        if not self.use_relay:
            return server_port
        self._relay = RelayProcess(("127.0.0.1", server_port), self.one_way_ms,
                                   self.bandwidth_mbps, self.relay_spin_us)
        self._res.cleanups.append(self._relay.close)  # registered before it can fail
        self._relay.start()
        self.relay_pid = self._relay.pid
        return self._relay.port

    def _start(self) -> None:
        if self.transport == "ssh":
            super()._start()
            return
        res = self._res
        res.state_dir = self.state_dir = Path(tempfile.mkdtemp(prefix="lmdbio-latfs-"))
        log = open(res.state_dir / "sftp-server.log", "wb")
        res.cleanups.append(log.close)
        listener = SftpListener(self.export_dir, log)
        res.cleanups.append(listener.close)
        self.sftp_server_pids = listener.pids  # the same list: filled as sshfs connects
        listener.start()
        self.listener_port = listener.port
        port = self._client_port(listener.port)
        options = ",".join([f"directport={port}", *DIRECT_OPTIONS, *self.extra_options])
        self._mount(["-o", options, f"127.0.0.1:{self.export_dir}"])
