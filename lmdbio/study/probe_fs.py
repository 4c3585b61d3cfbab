"""What a (network) file system delivers right now: round trip, sequential rate, cold small files.

``probe(mountpoint, export_dir)`` measures through a live mount (e.g. a
:class:`~lmdbio.study.latency_fs.LatencyMount`) and returns the columns every row of a storage
sweep records beside its configured delay:

- ``measured_rtt_ms``: median time of ``stat()`` on fresh names that do not exist.  Each is a
  FUSE LOOKUP that sshfs turns into one SFTP ``LSTAT``: exactly one request/reply round trip,
  no disk I/O on the server, and never cached because the name was never seen (sshfs caches
  attributes for 20 s and FUSE does not cache negative entries by default).  It includes the
  client and server software path (~0.1 ms on loopback), which is part of every request.
- ``seq_mb_s``: one cold file (``seq_bytes``) read start to end in 1 MiB ``read()`` calls.
- ``file_open_read_ms``: median ``open`` + read to EOF + ``close`` of cold ``file_bytes``
  files in random order (``files_per_s`` is their count over the total time).

Cold on both sides (``server_cold=False``: client only): the probe files are written on the server side (``export_dir``), fsync'ed
and evicted there (:func:`lmdbio.study.pagecache.evict`), and the client has never looked them
up, so it holds neither their pages nor their attributes.  They are removed afterwards.
Stdlib only.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from lmdbio.study.pagecache import PathLike, evict

__all__ = ["FsProbe", "probe", "measure_rtt", "measure_seq", "measure_files", "COLUMNS"]

COLUMNS = ("measured_rtt_ms", "seq_mb_s", "file_open_read_ms")
_READ = 1 << 20


@dataclass(frozen=True)
class FsProbe:
    measured_rtt_ms: float
    seq_mb_s: float
    file_open_read_ms: float
    files_per_s: float
    rtt_p90_ms: float
    stats: int
    files: int
    file_bytes: int
    seq_bytes: int
    server_cold: bool

    def columns(self) -> dict[str, float]:
        """The three columns a sweep row records."""
        return {name: getattr(self, name) for name in COLUMNS}

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _probe_dir(export_dir: PathLike) -> str:
    name = f".lmdbio-probe-{secrets.token_hex(6)}"
    (Path(export_dir) / name).mkdir()
    return name


def measure_rtt(mountpoint: PathLike, n: int = 100) -> list[float]:
    """Seconds per ``stat()`` of ``n`` fresh missing names (one round trip each)."""
    token = secrets.token_hex(6)
    base = Path(mountpoint)
    times = []
    for i in range(n):
        path = base / f".lmdbio-rtt-{token}-{i}"
        t0 = time.perf_counter()
        try:
            os.stat(path)
        except FileNotFoundError:
            pass
        else:
            raise RuntimeError(f"{path} exists: not a fresh name")
        times.append(time.perf_counter() - t0)
    return times


def _read_to_eof(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    total = 0
    try:
        while True:
            chunk = os.read(fd, _READ)
            if not chunk:
                return total
            total += len(chunk)
    finally:
        os.close(fd)


def measure_seq(mountpoint: PathLike, export_dir: PathLike, nbytes: int = 32 << 20,
                server_cold: bool = True) -> float:
    """MB/s (1e6 bytes/s) reading one cold ``nbytes`` file through the mount."""
    sub = _probe_dir(export_dir)
    try:
        server = Path(export_dir, sub, "seq.bin")
        with open(server, "wb") as f:
            for _ in range(0, nbytes, _READ):
                f.write(os.urandom(min(_READ, nbytes - f.tell())))
        if server_cold:
            evict(server)  # fsync + drop the server's pages
        t0 = time.perf_counter()
        got = _read_to_eof(Path(mountpoint, sub, "seq.bin"))
        elapsed = time.perf_counter() - t0
        if got != nbytes:
            raise RuntimeError(f"read {got} of {nbytes} bytes through {mountpoint}")
        return nbytes / elapsed / 1e6
    finally:
        shutil.rmtree(Path(export_dir, sub), ignore_errors=True)


def measure_files(mountpoint: PathLike, export_dir: PathLike, n: int = 100,
                  file_bytes: int = 30_000, seed: Optional[int] = None,
                  readers: int = 1, server_cold: bool = True) -> tuple[list[float], float]:
    """Seconds per cold open+read+close of ``n`` files in random order, and total seconds.

    ``readers`` > 1 reads with that many threads (a throughput test: per-file times then
    include waiting behind the others).  ``server_cold=False`` leaves the server's copy in
    its page cache (the client is cold regardless): the file system path alone, no disk."""
    sub = _probe_dir(export_dir)
    try:
        names = [f"{i:05d}.bin" for i in range(n)]
        for name in names:
            Path(export_dir, sub, name).write_bytes(os.urandom(file_bytes))
        if server_cold:
            evict(Path(export_dir, sub))
        random.Random(seed).shuffle(names)

        def read(name: str) -> float:
            t0 = time.perf_counter()
            got = _read_to_eof(Path(mountpoint, sub, name))
            if got != file_bytes:
                raise RuntimeError(f"read {got} of {file_bytes} bytes of {name}")
            return time.perf_counter() - t0

        start = time.perf_counter()
        if readers <= 1:
            times = [read(name) for name in names]
        else:
            with ThreadPoolExecutor(readers) as pool:
                times = list(pool.map(read, names))
        return times, time.perf_counter() - start
    finally:
        shutil.rmtree(Path(export_dir, sub), ignore_errors=True)


def probe(mountpoint: PathLike, export_dir: PathLike, *, stats: int = 100, files: int = 100,
          file_bytes: int = 30_000, seq_bytes: int = 32 << 20,
          seed: Optional[int] = None, server_cold: bool = True) -> FsProbe:
    """Measure the mount of ``export_dir`` at ``mountpoint`` (see the module doc)."""
    rtts = sorted(measure_rtt(mountpoint, stats))
    seq = measure_seq(mountpoint, export_dir, seq_bytes, server_cold)
    file_times, total = measure_files(mountpoint, export_dir, files, file_bytes, seed,
                                      server_cold=server_cold)
    return FsProbe(
        measured_rtt_ms=statistics.median(rtts) * 1e3,
        seq_mb_s=seq,
        file_open_read_ms=statistics.median(file_times) * 1e3,
        files_per_s=files / total,
        rtt_p90_ms=rtts[min(len(rtts) - 1, int(0.9 * len(rtts)))] * 1e3,
        stats=stats, files=files, file_bytes=file_bytes, seq_bytes=seq_bytes,
        server_cold=server_cold)
