"""cgroup v1 groups for the study's storage conditions: a throttled disk, a small page cache.

``ControlGroup("blkio", {"blkio.throttle.read_iops_device": "254:0 150"})`` creates a child of
this process's own group of that controller, with those settings; ``with group.joined():`` moves
this process (all its threads) in and, on the way out, back to where it was, so DataLoader
workers forked inside inherit it and nothing else does.  Exit (also on an exception or Ctrl-C)
moves every task still inside back to the parent and removes the group; ``sweep_stale()``
removes groups left by a process that was killed outright (``kill -9``).

Two facts of cgroup v1 the study relies on (both checked by the tests, not assumed):
- blkio throttling applies to buffered reads (and page faults of an mmap): they are issued by
  the reading task, so its group's ``read_iops``/``read_bps`` limits hold.
- memory charges do not move with a task (``move_charge_at_immigrate`` is 0): what the process
  allocated before joining (torch, ~300 MB) stays charged outside, so a memory limit bounds
  what the readers allocate and page in from then on — their page cache above all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["CGROUP_ROOT", "ControlGroup", "CgroupUnavailable", "available", "block_device",
           "own_group", "sweep_stale"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
PREFIX = "lmdbio-"


class CgroupUnavailable(RuntimeError):
    """This machine (or user) cannot make the group: not cgroup v1, not root."""


def own_group(controller: str) -> Path:
    """The directory of this process's group of a v1 ``controller``."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, relative = line.split(":", 2)
        if controller in controllers.split(","):
            path = CGROUP_ROOT / controller / relative.lstrip("/")
            if path.is_dir():
                return path
    raise CgroupUnavailable(f"no cgroup v1 {controller} hierarchy under {CGROUP_ROOT}; "
                            "remedy: run on a cgroup v1 host")


def available(controller: str) -> tuple[bool, str]:
    """Whether a child group of ``controller`` can be made here, and why not."""
    try:
        group = own_group(controller)
    except (OSError, CgroupUnavailable) as exc:
        return False, str(exc)
    if not os.access(group, os.W_OK):
        return False, f"{group} is not writable; remedy: run as root"
    return True, f"{group} writable"


def block_device(path: str | os.PathLike[str]) -> str:
    """``MAJ:MIN`` of the whole disk holding ``path`` (blkio throttles disks, not partitions)."""
    dev = os.stat(path).st_dev
    sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not sys_dev.exists():
        raise CgroupUnavailable(f"{path} is not on a block device ({os.major(dev)}:"
                                f"{os.minor(dev)}: overlay, tmpfs or FUSE?); remedy: put the "
                                "data on a local disk")
    if (sys_dev / "partition").exists():  # a partition: its parent directory is the disk
        sys_dev = sys_dev.resolve().parent
    return (sys_dev / "dev").read_text().strip()


def _move_all(source: Path, target: Path) -> None:
    """Move every task of ``source`` to ``target`` (tasks may come and go meanwhile)."""
    for _ in range(50):
        pids = (source / "cgroup.procs").read_text().split()
        if not pids:
            return
        for pid in pids:
            try:
                (target / "cgroup.procs").write_text(pid)
            except ProcessLookupError:  # exited meanwhile
                pass
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
        time.sleep(0.01)


def _remove(group: Path) -> None:
    _move_all(group, group.parent)
    if (group / "memory.force_empty").exists():
        with contextlib.suppress(OSError):  # uncharge its page cache before it goes
            (group / "memory.force_empty").write_text("0")
    for _ in range(100):  # rmdir fails with EBUSY while an exiting task is still listed
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            _move_all(group, group.parent)
            time.sleep(0.02)
    group.rmdir()


def sweep_stale(controller: str) -> list[str]:
    """Remove groups of ours whose creator is gone (a run killed with SIGKILL); their names."""
    removed = []
    parent = own_group(controller)
    for group in parent.glob(f"{PREFIX}*-*"):
        pid = group.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _remove(group)
            removed.append(group.name)
    return removed


class ControlGroup:
    """A child group of this process's v1 ``controller`` group (see the module doc)."""

    def __init__(self, controller: str, settings: Mapping[str, str], *, name: str = "") -> None:
        self.controller = controller
        self.settings = dict(settings)
        self.name = f"{PREFIX}{name or controller}-{os.getpid()}"
        self.path: Path | None = None

    def __enter__(self) -> "ControlGroup":
        ok, why = available(self.controller)
        if not ok:
            raise CgroupUnavailable(why)
        sweep_stale(self.controller)
        self.path = own_group(self.controller) / self.name
        self.path.mkdir()
        try:
            self.set(self.settings)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Move every task back to the parent, remove the group.  Idempotent."""
        path, self.path = self.path, None
        if path is not None and path.exists():
            _remove(path)

    def set(self, settings: Mapping[str, str]) -> None:
        for key, value in settings.items():
            self._file(key).write_text(str(value))

    def read(self, key: str) -> str:
        return self._file(key).read_text()

    def read_int(self, key: str) -> int:
        return int(self.read(key).split()[0])

    def stat(self) -> dict[str, int]:
        """``memory.stat`` (or the controller's ``.stat``) as a dict of ints."""
        return {k: int(v) for k, v in (line.split() for line in
                                       self.read(f"{self.controller}.stat").splitlines())}

    def _file(self, key: str) -> Path:
        if self.path is None:
            raise RuntimeError(f"cgroup {self.name} is not open")
        return self.path / key

    @contextlib.contextmanager
    def joined(self) -> Iterator["ControlGroup"]:
        """This process inside the group for the with-block, back where it was after."""
        home = own_group(self.controller)
        self._file("cgroup.procs").write_text(str(os.getpid()))
        try:
            yield self
        finally:
            (home / "cgroup.procs").write_text(str(os.getpid()))
