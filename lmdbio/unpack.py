"""``extract``: write a database's ImageFolder tree back, byte for byte, never outside OUTDIR.

The stored paths come from a file that may be hostile, and OUTDIR's folders may be written by
someone else while extract runs. So every stored path is validated before anything is written
(``format.stored_path_problems``: no ``..``, no absolute path, no duplicates, bounded length
and depth), and every folder and file is created relative to an already opened folder (``dir_fd``)
with ``O_NOFOLLOW``: a symlink swapped into OUTDIR at any moment makes extract stop with an
error, never write through it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections import OrderedDict
from collections.abc import Iterator

from .database import Database
from .envs import EnvOptions, options_for
from .errors import DestinationError, DiskFullError, FormatError, LmdbioError
from .format import stored_path_problems
from .lmdbcheck import require_sound
from .paths import absolute_path, named
from .progress import Progress

__all__ = ["extract", "staged"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FOLDERS = 64  # folder fds kept open (listing order visits one class folder at a time)


def extract(path: str | os.PathLike[str], outdir: str | os.PathLike[str], *,
            overwrite: bool = False, progress: bool = False) -> int:
    """Write the ImageFolder tree back to ``outdir``, byte for byte, with a folder for every
    class (those without images too); returns the file count.

    Into a new or empty ``outdir`` the tree is written beside it (``.NAME.lmdbio-partial-*``,
    only its owner may enter it) and renamed into place when complete (into an empty folder:
    its entries, so the folder keeps its owner, mode and ACLs): a failure or Ctrl-C leaves
    nothing under ``outdir``. Where that cannot be (its parent not writable, another file
    system mounted there, a symbolic link) and into a folder that holds files already (``overwrite``
    replaces those the database also holds) each file is written under a temporary name and
    renamed, so no half-written image is left under its final name, and a failure names how
    many were written. ``outdir`` itself may be a symlink (the caller chose it); nothing below
    it is followed.
    """
    named(outdir, "output folder", DestinationError)
    outdir = absolute_path(outdir)
    require_sound(os.path.expanduser(os.fspath(path)))  # every record is read through liblmdb
    with Database(path, options_for(os.fspath(path), EnvOptions(readahead=True))) as db:
        relative = db.relative_paths()
        classes = db.meta.classes  # their folders too: a class without images is still one
        problems = stored_path_problems(relative, limit=1) or _class_problems(classes)
        if problems:  # all checked before any I/O
            raise FormatError(f"{db.path!r}: {problems[0][1]}; refusing to extract anything "
                              f"into {outdir!r} (the database is damaged or hostile)")
        with _io_errors(outdir, "extract"):
            stage = _stage_beside(outdir) if staged(outdir) else None
            if stage is None:
                os.makedirs(outdir, exist_ok=True)
        written = 0
        try:
            with _io_errors(outdir, "extract"), Progress(len(db), enabled=progress) as bar:
                folders = _Folders(stage or outdir)
                try:
                    for index, rel in enumerate(relative):
                        *parents, name = rel.split(os.sep)
                        folder = folders.open(parents)
                        if not overwrite and _exists(name, folder):
                            raise DestinationError(
                                f"{os.path.join(outdir, rel)!r} already exists; pass "
                                "--overwrite or extract into an empty folder")
                        _, data = db.get(index)
                        _write_new(folder, name, data, os.path.join(outdir, rel))
                        written += 1
                        bar.update(len(data))
                    for name in classes:  # ImageFolder finds its classes as folders
                        folders.open([name])
                finally:
                    folders.close()
            if stage is not None:
                _publish_tree(stage, outdir)
        except BaseException as exc:
            if stage is not None:
                shutil.rmtree(stage, ignore_errors=True)
            elif written and isinstance(exc, (DestinationError, DiskFullError, FormatError)):
                raise type(exc)(f"{exc} ({written} of {len(relative)} files were written to "
                                f"{outdir!r} before it stopped)") from None
            raise
    return len(relative)


def _class_problems(classes: list[str]) -> list[tuple[int, str]]:
    """Like ``stored_path_problems``, for the class names: each must be one folder name that
    extract may write (a class is a folder directly under the root)."""
    for index, name in enumerate(classes):
        if any(sep and sep in name for sep in (os.sep, os.altsep)) or \
                stored_path_problems([name], limit=1):
            return [(index, f"class {index} {name!r} is not a folder name extract may write "
                            "(empty, '.', '..', a separator, NUL or too long)")]
    return []


def staged(outdir: str) -> bool:
    """Whether ``extract`` writes ``outdir`` whole, beside it, and renames it into place: a
    new ``outdir``, or an empty real folder on its parent's file system, where the parent is
    writable (a mount point or a symlink is written in place, as a folder holding files is)."""
    parent = os.path.dirname(outdir) or os.sep
    try:
        info = os.lstat(outdir)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # the write in place says what is wrong, in one line
    try:
        if not stat.S_ISDIR(info.st_mode) or os.listdir(outdir):
            return False
        return os.stat(parent).st_dev == info.st_dev and os.access(parent, os.W_OK | os.X_OK)
    except OSError:
        return False  # the write in place says what is wrong, in one line


def _stage_beside(outdir: str) -> str:
    parent, name = os.path.split(outdir)
    os.makedirs(parent, exist_ok=True)
    stage = os.path.join(parent, f".{name}.lmdbio-partial-{secrets.token_hex(4)}")
    os.mkdir(stage, 0o700)  # nobody else writes into it meanwhile
    return stage


def _publish_tree(stage: str, outdir: str) -> None:
    """``stage`` renamed to ``outdir`` where it is absent; into an existing (empty) folder its
    entries are, one rename each (the folder itself stays the user's). What appeared there
    meanwhile is left alone: an error."""
    appeared = DestinationError(f"{outdir!r} appeared or was filled during the extract; "
                                "extract into an empty folder")
    if not os.path.lexists(outdir):
        os.chmod(stage, 0o777 & ~_umask())
        try:
            os.rename(stage, outdir)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    if not os.path.isdir(outdir) or os.path.islink(outdir) or os.listdir(outdir):
        raise appeared
    for name in os.listdir(stage):
        if os.path.lexists(os.path.join(outdir, name)):
            raise appeared
        os.rename(os.path.join(stage, name), os.path.join(outdir, name))
    os.rmdir(stage)


def _umask() -> int:
    """This process's umask, read from /proc (setting it to read it races other threads)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@contextlib.contextmanager
def _io_errors(outdir: str, what: str) -> Iterator[None]:
    """An ``OSError`` lmdbio did not raise itself, in one line with the folder and the remedy."""
    try:
        yield
    except LmdbioError:
        raise
    except OSError as exc:
        where = exc.filename or outdir
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"disk full during the {what} into {outdir!r}; free space or "
                                "choose another folder") from None
        if exc.errno in (errno.EEXIST, errno.ENOTDIR) and os.path.isfile(outdir):
            raise DestinationError(f"{outdir!r} is a file, not a folder; choose another "
                                   "OUTDIR") from None
        raise DestinationError(f"cannot write {where!r} during the {what} ({exc.strerror}); "
                               "choose a folder you can write, on a writable file system"
                               ) from None


def _exists(name: str, folder: int) -> bool:
    try:
        os.lstat(name, dir_fd=folder)
    except FileNotFoundError:
        return False
    return True


def _write_new(folder: int, name: str, data: bytes, shown: str) -> None:
    """``data`` as ``name`` in the open folder: a new temporary file (O_EXCL, O_NOFOLLOW),
    then renamed over ``name`` (a link at ``name`` is replaced, never followed)."""
    tmp = f".lmdbio-{secrets.token_hex(8)}"
    try:  # the open inside: Ctrl-C as it returns must not leave the file behind
        fd = os.open(tmp, _NEW_FILE, 0o644, dir_fd=folder)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)  # whatever the umask, as the source files
            handle.write(data)
        try:
            os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
        except IsADirectoryError:
            raise DestinationError(f"{shown!r} is a folder; extract into an empty folder"
                                   ) from None
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=folder)
        except OSError:  # never created (the open failed): the first error is the one to say
            pass
        raise


class _Folders:
    """Open folder fds under the root, by relative components, each opened relative to its
    parent's fd with O_NOFOLLOW (a few kept open: the listing visits folders in order)."""

    def __init__(self, root: str) -> None:
        self.root_name = root
        self.root = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.cache: OrderedDict[tuple[str, ...], int] = OrderedDict()

    def open(self, parts: list[str]) -> int:
        key = tuple(parts)
        if not key:
            return self.root
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        parent = self.open(parts[:-1])
        name = parts[-1]
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                # FormatError, as extract has always raised for paths leaving OUTDIR
                raise FormatError(
                    f"{os.path.join(self.root_name, *parts)!r} is a symlink or a file, not a "
                    "folder; refusing to extract through a symlink (extract into an empty "
                    "folder that only you can write)") from None
            raise
        self.cache[key] = fd
        while len(self.cache) > _OPEN_FOLDERS:  # the least recently used, never this one;
            os.close(self.cache.popitem(last=False)[1])  # a parent is done with once opened
        return fd

    def close(self) -> None:
        for fd in self.cache.values():
            os.close(fd)
        self.cache.clear()
        os.close(self.root)
