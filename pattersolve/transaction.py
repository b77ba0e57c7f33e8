"""Writing outputs so that nothing the user had is lost.

A run's outputs form one :class:`OutputSet`:

1. :meth:`OutputSet.claim` checks every path before any work (an existing file needs
   ``overwrite``; only regular files are ever replaced; the folder must be writable) and locks
   each one (``fcntl.flock`` on a hidden ``.NAME.lock`` beside it), so a second run with the
   same outputs fails at once rather than after all its work;
2. :meth:`OutputSet.stage` writes each output to a temporary file beside its target;
3. :meth:`OutputSet.commit` renames them into place together once all are ready: old files
   are moved aside first and restored if any rename fails, then removed.

A run that fails at any point (an exception, a full disk, Ctrl-C) leaves the folder as it
was. Files are created with the user's umask (``tempfile`` alone would make them 0600).

:func:`write_atomic` is the one-file form, used by the tool and the training tree alike.

Examples
--------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> with OutputSet([folder / "a.txt", folder / "b.txt"]) as out:
...     out.stage(folder / "a.txt", lambda tmp: pathlib.Path(tmp).write_text("a"))
...     out.stage(folder / "b.txt", lambda tmp: pathlib.Path(tmp).write_text("b"))
...     written = out.commit()
>>> sorted(p.name for p in folder.iterdir())
['a.txt', 'b.txt']
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from .errors import ExitCode, PattersolveError

Writer = Callable[[str], object]


def _umask() -> int:
    """The process's umask (read without changing it for longer than one call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _describe(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_writable(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse, before any work, an output that cannot or must not be written.

    An existing output needs ``overwrite``; only a regular file is ever replaced (a symbolic
    link, folder or device at the path is refused even with ``overwrite``); the folder must
    exist and be writable.
    """
    p = Path(path)
    try:
        mode = os.lstat(p).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise PattersolveError(f"cannot check output {p}: {exc.strerror}",
                               "choose another output path", ExitCode.OUTPUT) from None
    if mode is not None and not stat.S_ISREG(mode):
        raise PattersolveError(f"output {p} is {_describe(mode)}",
                               "give the path of a regular file (only regular files are "
                               "replaced)", ExitCode.OUTPUT)
    if mode is not None and not overwrite:
        raise PattersolveError(f"output {p} already exists",
                               "choose another name, or pass --overwrite to replace it",
                               ExitCode.OUTPUT)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise PattersolveError(f"output folder {parent} does not exist",
                               "create it or choose another path", ExitCode.OUTPUT)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PattersolveError(f"output folder {parent} is not writable",
                               "choose a folder you can write to", ExitCode.OUTPUT)
    return p


def _lock_path(p: Path) -> Path:
    return p.with_name(f".{p.name}.lock")


def _take_lock(p: Path) -> int:
    """An exclusive ``flock`` on ``.NAME.lock`` beside ``p``; the file descriptor.

    The kernel drops the lock when the process ends, however it ends, so a killed run never
    blocks the next. The lock file is re-checked after locking: a run that finished and
    removed it in between is not trusted.
    """
    lock = _lock_path(p)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as exc:
            raise PattersolveError(f"cannot create the lock file {lock}: {exc.strerror}",
                                   "check the folder's permissions", ExitCode.OUTPUT) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PattersolveError(f"output {p} is being written by another run "
                                   f"({lock} is locked)",
                                   "wait for it to finish or choose other output names",
                                   ExitCode.OUTPUT) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _write_error(path: Path, exc: BaseException) -> PattersolveError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return PattersolveError(f"could not write {path}: {reason}",
                            "check the free disk space and the folder's permissions",
                            ExitCode.OUTPUT)


class OutputSet:
    """All outputs of one run, replaced together or not at all.

    Parameters
    ----------
    paths
        Every file the run will write (``None`` entries are ignored).
    overwrite
        Allow existing regular files to be replaced.
    protect
        Paths that must never be outputs (the inputs).
    """

    def __init__(self, paths: Iterable[str | os.PathLike[str] | None], overwrite: bool = False,
                 protect: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.paths = [Path(p) for p in paths if p is not None]
        self.overwrite = overwrite
        self.protect = [Path(p) for p in protect]
        self._locks: list[int] = []
        self._staged: dict[Path, str] = {}

    # --- before the work ------------------------------------------------------------------
    def claim(self) -> OutputSet:
        """Check and lock every output; raise :class:`PattersolveError` if one is unusable."""
        resolved = [p.resolve() for p in self.paths]
        if len(set(resolved)) != len(resolved):
            raise PattersolveError("two outputs have the same path",
                                   "give each output its own file name", ExitCode.USAGE)
        inputs = {p.resolve() for p in self.protect}
        for p, r in zip(self.paths, resolved, strict=True):
            if r in inputs:
                raise PattersolveError(f"output {p} is an input file",
                                       "choose another output name", ExitCode.OUTPUT)
        try:
            for p in self.paths:
                check_writable(p, self.overwrite)
                self._locks.append(_take_lock(p))
        except BaseException:
            self.release()
            raise
        return self

    # --- the work's results ---------------------------------------------------------------
    def stage(self, path: str | os.PathLike[str], writer: Writer) -> None:
        """Write one output to a temporary file beside it with ``writer(tmp_path)``."""
        p = Path(path)
        if p not in self.paths:
            raise ValueError(f"{p} was not declared as an output of this set")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp",
                                       dir=p.parent or ".")
        except OSError as exc:
            raise _write_error(p, exc) from None
        os.close(fd)
        self._staged[p] = tmp
        try:
            writer(tmp)
            os.chmod(tmp, 0o666 & ~_umask())
        except PattersolveError:
            raise
        except Exception as exc:
            raise _write_error(p, exc) from None

    def commit(self) -> list[Path]:
        """Move every staged file into place; all or nothing. Returns the paths written."""
        missing = [p for p in self.paths if p not in self._staged]
        if missing:
            raise RuntimeError(f"outputs not staged: {', '.join(map(str, missing))}")
        for p in self.paths:  # the world may have changed during the run
            check_writable(p, self.overwrite)
        backups: dict[Path, str] = {}
        placed: list[Path] = []
        try:
            for p in self.paths:
                if os.path.lexists(p):
                    backups[p] = str(p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.old"))
                    os.replace(p, backups[p])
                os.replace(self._staged[p], p)
                placed.append(p)
        except BaseException as exc:
            self._roll_back(placed, backups)
            if isinstance(exc, OSError):
                raise _write_error(p, exc) from None
            raise
        for b in backups.values():
            os.unlink(b)
        self._staged.clear()
        return list(self.paths)

    def _roll_back(self, placed: list[Path], backups: dict[Path, str]) -> None:
        for p in placed:
            os.unlink(p)
        for p, b in backups.items():
            if os.path.lexists(b):
                os.replace(b, p)

    # --- after ----------------------------------------------------------------------------
    def abort(self) -> None:
        """Remove every staged temporary file."""
        for tmp in self._staged.values():
            if os.path.lexists(tmp):
                os.unlink(tmp)
        self._staged.clear()

    def release(self) -> None:
        """Drop the locks and remove the lock files."""
        for p, fd in zip(self.paths, self._locks, strict=False):
            try:
                os.unlink(_lock_path(p))
            except FileNotFoundError:
                pass
            os.close(fd)
        self._locks.clear()

    def __enter__(self) -> OutputSet:
        return self.claim()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()
        self.release()


@contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path``; move it into place if the block succeeds."""
    p = Path(path)
    with OutputSet([p], overwrite) as out:
        holder: list[str] = []
        out.stage(p, holder.append)
        yield holder[0]
        out.commit()


def write_atomic(path: str | os.PathLike[str], writer: Writer, overwrite: bool = False
                 ) -> Path:
    """Write one file with ``writer(tmp_path)`` and move it to ``path`` (all or nothing)."""
    p = Path(path)
    with OutputSet([p], overwrite) as out:
        out.stage(p, writer)
        out.commit()
    return p
