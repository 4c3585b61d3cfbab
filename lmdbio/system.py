"""Facts about the machine this process runs on, read from ``/proc``: which file system holds a
path, and this process's peak memory. The converter, the reader and the study all ask these, so
they are answered once, here (stdlib only, no daemon involved)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NETWORK_FS_TYPES", "FsInfo", "cores_available", "cpu_quota", "fs_info",
           "is_network_fs", "mounts", "on_network_fs", "peak_rss_bytes", "proc_kib_field"]

# Types whose every page-cache miss is a request over a network (FUSE counts: sshfs, s3fs, ...).
NETWORK_FS_TYPES = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "lustre", "gpfs",
                              "glusterfs", "9p", "afs", "beegfs", "davfs", "virtiofs"})


@dataclass(frozen=True)
class FsInfo:
    """The mount holding a path: mount point, type (``fuse.sshfs``), source, options."""

    mount_point: str
    fstype: str
    source: str
    options: str  # per-mount options followed by new superblock options


def _unescape(field: str) -> str:
    """Decode mountinfo's octal escapes (``\\040`` is a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts() -> list[FsInfo]:
    """Every mount this process sees, in ``/proc/self/mountinfo`` order (stacked mounts on one
    point: the last listed is the visible one)."""
    infos = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            # id parent major:minor root MOUNT_POINT OPTIONS [optional...] - TYPE SOURCE SUPER
            left, _, right = line.rstrip("\n").partition(" - ")
            fields, (fstype, source, super_options) = left.split(" "), right.split(" ", 2)
            options = list(dict.fromkeys(fields[5].split(",") + super_options.split(",")))
            infos.append(FsInfo(_unescape(fields[4]), _unescape(fstype),
                                _unescape(source), ",".join(options)))
    return infos


def fs_info(path: str | os.PathLike[str]) -> FsInfo:
    """The mount that holds ``path`` (longest mount-point prefix wins; among stacked mounts on
    one point the last listed, i.e. visible, one). ``OSError`` if none does."""
    target = os.path.realpath(path)
    best: FsInfo | None = None
    for info in mounts():
        inside = target == info.mount_point or target.startswith(
            info.mount_point.rstrip("/") + "/")
        if inside and (best is None or len(info.mount_point) >= len(best.mount_point)):
            best = info
    if best is None:
        raise OSError(f"no mount found for {target}")
    return best


def is_network_fs(fstype: str) -> bool:
    """Whether a mount of type ``fstype`` reads over a network (or through FUSE, except
    ``fuseblk``: a local block device read by a FUSE driver, such as NTFS or exFAT)."""
    return (fstype.startswith("fuse") and fstype != "fuseblk") or fstype in NETWORK_FS_TYPES


def on_network_fs(path: str) -> bool:
    """Whether ``path`` lies on a network or FUSE file system (``is_network_fs``); False when
    its mount cannot be found."""
    try:
        return is_network_fs(fs_info(path).fstype)
    except OSError:
        return False


def proc_kib_field(path: str, key: str) -> int | None:
    """The ``key: N kB`` line of a ``/proc`` file such as ``/proc/meminfo`` or
    ``/proc/self/status``, in bytes; None when the file or the line is missing."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident memory since its exec (``VmHWM``). ``ru_maxrss`` is not
    that: it keeps the parent's high-water mark across fork + exec, so a converter started from
    a notebook kernel or a benchmark would report their size."""
    peak = proc_kib_field("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    import resource  # not Linux: the best there is

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_quota() -> float | None:
    """CPUs' worth of time the cgroup(s) of this process may use (``cpu.max`` on v2,
    ``cpu.cfs_quota_us / cpu.cfs_period_us`` on v1, the tightest of the group and its
    ancestors); None when unlimited or unknown. A container or a Slurm step with 2 CPUs of
    quota decodes at 2 cores' rate however many the machine has."""
    text = _read_text(Path("/proc/self/cgroup"))
    if text is None:
        return None
    limits: list[float] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, relative = parts
        if controllers == "":  # v2
            bases = [Path("/sys/fs/cgroup")]
        elif "cpu" in controllers.split(","):  # v1: mounted as cpu, or cpu,cpuacct
            bases = [Path("/sys/fs/cgroup") / name for name in ("cpu", "cpu,cpuacct")]
        else:
            continue
        for base in bases:
            folder = base / relative.lstrip("/")
            for level in (folder, *folder.parents):
                if not str(level).startswith(str(base)):
                    break
                limits += _quota_at(level, v2=controllers == "")
    return min(limits) if limits else None


def _quota_at(folder: Path, v2: bool) -> list[float]:
    try:
        if v2:
            text = _read_text(folder / "cpu.max")
            if not text:
                return []
            quota, _, period = text.partition(" ")
            return [] if quota == "max" else [int(quota) / int(period or 100_000)]
        quota_text = _read_text(folder / "cpu.cfs_quota_us")
        period_text = _read_text(folder / "cpu.cfs_period_us")
        if not quota_text or not period_text or int(quota_text) <= 0:
            return []  # -1: no quota
        return [int(quota_text) / int(period_text)]
    except ValueError:
        return []


def cores_available() -> tuple[float, int, float | None]:
    """``(cores, affinity, quota)``: the CPUs this process may run on (``sched_getaffinity``),
    capped by its cgroup's CPU quota."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    quota = cpu_quota()
    return (min(float(affinity), quota) if quota else float(affinity)), affinity, quota
