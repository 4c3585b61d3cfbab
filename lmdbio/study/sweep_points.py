"""The storage conditions of the sweep, each a context that brings the storage up and down.

A :class:`Point` says what to emulate; :func:`opened` yields a :class:`Site`: where a run reads
the data (paths through the mount, or local), what to evict on the server side, the columns
measured at run time that every row of the point carries, and a ``limit_for(fmt)`` hook the
memory condition uses to size its cgroup per strategy. Conditions:

- ``network``: sshfs over SFTP without ssh (``LatencyMount``, transport ``direct``) through the
  delay relay: ``rtt_ms`` added per round trip, optionally a bandwidth cap; measured at run
  time: round trip (``stat`` of fresh names), sequential MB/s, cold open+read of small files.
- ``hdd-like``: the local disk, the readers in a blkio cgroup throttled to ``iops`` reads/s and
  ``mb_s`` MB/s; measured inside: cold random 4 KiB reads/s and sequential MB/s of the LMDB file.
- ``larger-than-cache``: the local disk, the readers in a memory cgroup whose room for page
  cache is ``1/cache_ratio`` of the data: limit = what the group holds before the run (this
  process's allocations made inside earlier, which stay charged to it) + the strategy's own
  memory (its peak in a warm calibration run at that limit, where no data page is charged to
  the group) + data bytes / ``cache_ratio``.
- ``target``: a mount the user names (``--target``): nothing emulated, round trip measured.

Everything is torn down on exit, also on an exception or Ctrl-C (the mounts, relay and
sftp-servers by ``LatencyMount``, the groups by ``ControlGroup``).
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lmdbio.study import pagecache
from lmdbio.study.cgroups import ControlGroup, block_device
from lmdbio.study.latency_fs import LatencyMount
from lmdbio.study.probe_fs import measure_rtt, probe
from lmdbio.study.protocol import data_path, prepare_cache
from lmdbio.study.workspace import Workspace

__all__ = ["Point", "Site", "opened", "relocated", "throttle_check"]

KINDS = ("network", "hdd-like", "larger-than-cache", "target")


@dataclass(frozen=True)
class Point:
    kind: str                          # one of KINDS
    rtt_ms: float | None = None        # network: configured added round trip
    bandwidth_mbps: float | None = None
    caches: tuple[str, ...] = ("cold",)
    iops: int = 150                    # hdd-like
    mb_s: float = 150.0                # hdd-like
    cache_ratio: float = 4.0           # larger-than-cache: data bytes / page cache room
    target: str = ""                   # target: the user's folder
    max_images: int = 0                # images read per run here (0: the sweep's)

    @property
    def storage(self) -> str:
        """What the rows' ``storage`` column says."""
        return {"network": "sshfs-direct", "target": "target"}.get(self.kind, self.kind)

    @property
    def label(self) -> str:
        if self.kind == "network":
            cap = f", {self.bandwidth_mbps:g} Mb/s" if self.bandwidth_mbps else ""
            return f"+{self.rtt_ms:g} ms RTT{cap}"
        if self.kind == "hdd-like":
            return f"HDD-like ({self.iops} IOPS, {self.mb_s:g} MB/s)"
        if self.kind == "larger-than-cache":
            return f"data {self.cache_ratio:g}x the page cache"
        return f"target {self.target}"


@dataclass
class Site:
    workspace: Workspace                  # where the runs read (through the mount, if any)
    backing_dir: str = ""                 # server-side copy to evict too
    columns: dict[str, Any] = field(default_factory=dict)
    limit_for: Callable[[str], Any] | None = None  # larger-than-cache: (fmt) -> context

    def readers(self, fmt: str) -> contextlib.AbstractContextManager[dict[str, Any]]:
        """Where a run of ``fmt`` reads: inside its memory group where the point has one
        (yielding the group's columns), else as it is (no columns)."""
        return self.limit_for(fmt) if self.limit_for else contextlib.nullcontext({})


def relocated(ws: Workspace, root: str) -> Workspace:
    """``ws`` seen through a mount of ``ws.data_dir`` at ``root``."""
    def move(path: str) -> str:
        return os.path.join(root, os.path.relpath(path, ws.data_dir))

    return Workspace(root, move(ws.split_dir), move(ws.lmdb_path), False,
                     {fmt: move(p) for fmt, p in ws.peer_paths.items()})


def throttle_check(path: str, seconds: float = 1.5) -> dict[str, float]:
    """Cold random 4 KiB reads/s and cold sequential MB/s of ``path`` from this process."""
    size = os.path.getsize(path)
    pagecache.evict(path)
    rng = random.Random(0)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # one page per read: IOPS, not MB
        reads, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            os.pread(fd, 4096, rng.randrange(size // 4096) * 4096)
            reads += 1
        iops = reads / (time.perf_counter() - start)
    finally:
        os.close(fd)
    pagecache.evict(path)
    start = time.perf_counter()
    total = pagecache.read_through(path, 1 << 20)
    return {"random_read_iops": iops, "seq_mb_s": total / (time.perf_counter() - start) / 1e6}


@contextlib.contextmanager
def _network(point: Point, ws: Workspace) -> Iterator[Site]:
    one_way = (point.rtt_ms or 0.0) / 2
    with LatencyMount(ws.data_dir, one_way_ms=one_way,
                      bandwidth_mbps=point.bandwidth_mbps) as mount:
        assert mount.mountpoint is not None
        root = os.fspath(mount.mountpoint)
        measured = probe(root, ws.data_dir, seed=0)
        yield Site(relocated(ws, root), ws.data_dir,
                   {"transport": "sftp-direct", **measured.columns(),
                    "rtt_p90_ms": measured.rtt_p90_ms, "files_per_s": measured.files_per_s})


@contextlib.contextmanager
def _hdd_like(point: Point, ws: Workspace) -> Iterator[Site]:
    device = block_device(ws.data_dir)
    settings = {"blkio.throttle.read_iops_device": f"{device} {point.iops}",
                "blkio.throttle.read_bps_device": f"{device} {int(point.mb_s * 1e6)}"}
    free = throttle_check(ws.lmdb_path)  # the same disk unthrottled: shows the cgroup bites
    with ControlGroup("blkio", settings, name="hdd") as group, group.joined():
        check = throttle_check(ws.lmdb_path)
        yield Site(ws, "", {"block_device": device, "throttle_iops": point.iops,
                            "throttle_mb_s": point.mb_s, **check,
                            **{f"unthrottled_{k}": v for k, v in free.items()}})


def _data_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


@contextlib.contextmanager
def _larger_than_cache(point: Point, ws: Workspace,
                       calibrate: Callable[[str], None]) -> Iterator[Site]:
    """One memory group; before each run, its limit is set for that run's strategy."""
    with ControlGroup("memory", {}, name="cache") as group:
        own: dict[str, int] = {}

        def settled() -> int:
            """What the group holds with no reader inside: page cache is dropped, but what
            this process allocated while inside stays charged (anon memory cannot move)."""
            group.set({"memory.force_empty": "0"})
            return group.read_int("memory.usage_in_bytes")

        @contextlib.contextmanager
        def limit_for(fmt: str) -> Iterator[dict[str, Any]]:
            path = data_path(fmt, ws.split_dir, ws.lmdb_path, ws.peer_paths)
            data = _data_bytes(path)
            if fmt not in own:
                # Calibrate with the data resident (charged outside the group): first with no
                # limit, then at the limit this gives, because what the readers allocate depends
                # on it (lmdbio's prefetch "auto" reads the limit: on when the data fit).
                prepare_cache([path], "warm")
                for limit in (-1, None):
                    before = settled()
                    group.set({"memory.limit_in_bytes": str(
                        limit or before + own[fmt] + int(data / point.cache_ratio))})
                    with group.joined():
                        group.set({"memory.max_usage_in_bytes": "0"})
                        calibrate(fmt)
                        own[fmt] = group.read_int("memory.max_usage_in_bytes") - before
            base = settled()
            limit = base + own[fmt] + int(data / point.cache_ratio)
            group.set({"memory.limit_in_bytes": str(limit)})
            columns: dict[str, Any] = {"data_bytes_on_disk": data, "cgroup_limit_bytes": limit,
                                       "readers_own_bytes": own[fmt], "cgroup_base_bytes": base,
                                       "cache_room_bytes": limit - base - own[fmt]}
            try:
                with group.joined():
                    group.set({"memory.max_usage_in_bytes": "0", "memory.failcnt": "0"})
                    yield columns
                    stat = group.stat()
                    columns.update(
                        cgroup_peak_bytes=group.read_int("memory.max_usage_in_bytes"),
                        cgroup_failcnt=group.read_int("memory.failcnt"),
                        cgroup_rss_bytes=stat.get("total_rss", 0),
                        cgroup_cache_bytes=stat.get("total_cache", 0))
            finally:
                group.set({"memory.limit_in_bytes": "-1"})  # never squeeze what stays charged

        yield Site(ws, "", {"cache_ratio": point.cache_ratio}, limit_for)


@contextlib.contextmanager
def _target(point: Point, ws: Workspace) -> Iterator[Site]:
    rtts = sorted(measure_rtt(ws.data_dir, 100))
    measured = probe(ws.data_dir, ws.data_dir, seed=0, server_cold=True)
    yield Site(ws, "", {"transport": "user mount", **measured.columns(),
                        "rtt_p90_ms": rtts[int(0.9 * len(rtts))] * 1e3,
                        "files_per_s": measured.files_per_s,
                        "stat_median_ms": statistics.median(rtts) * 1e3})


@contextlib.contextmanager
def opened(point: Point, ws: Workspace,
           calibrate: Callable[[str], None] | None = None) -> Iterator[Site]:
    """Bring ``point``'s storage up over ``ws`` (local data), yield the :class:`Site`, tear down.

    ``calibrate(fmt)`` (larger-than-cache only) runs one warm run of ``fmt`` in the group."""
    if point.kind == "network":
        context = _network(point, ws)
    elif point.kind == "hdd-like":
        context = _hdd_like(point, ws)
    elif point.kind == "larger-than-cache":
        if calibrate is None:
            raise ValueError("larger-than-cache needs calibrate(fmt)")
        context = _larger_than_cache(point, ws, calibrate)
    elif point.kind == "target":
        context = _target(point, ws)
    else:
        raise ValueError(f"kind must be one of {KINDS}, not {point.kind!r}")
    with context as site:
        yield site


def residency_note(columns: Mapping[str, Any]) -> str:
    """One line of what a point measured, for the progress output."""
    keys = ("measured_rtt_ms", "seq_mb_s", "file_open_read_ms", "random_read_iops")
    return ", ".join(f"{k}={columns[k]:.3g}" for k in keys if k in columns)
