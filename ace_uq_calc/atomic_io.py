"""Atomic file writing: readers see either the old file or the complete new one, never a partial file.

The data go to a temporary file in the same directory as the target (so that the final rename stays on
one file system), are flushed and ``fsync``-ed, and the temporary file is then renamed over the target
with :func:`os.replace` (atomic on POSIX and on Windows). On an exception the temporary file is removed
and the target is left untouched. A process killed outright (SIGKILL, power loss) may leave a stray
``.<name>.*.tmp`` file next to the target, but never a truncated target.
"""
from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator

_WRITE_MODES = {"w", "wb", "wt"}


def _current_umask() -> int:
    """The process umask, read without changing it where possible (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _permissions_for(path: str) -> int:
    """Permission bits the new file should get: those of the file it replaces, else 0666 minus umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_current_umask()


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (best effort; not possible on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@contextmanager
def atomic_write(path, mode: str = "wb", encoding: str = "utf-8") -> Iterator[IO]:
    """Open a temporary file for writing; on success it atomically replaces ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The target file. Its directory must exist.
    mode : {"wb", "w", "wt"}
        Binary or text writing.
    encoding : str
        Encoding for text mode (ignored in binary mode).

    Yields the open file object. When the ``with`` block finishes normally, the data are flushed,
    ``fsync``-ed and the file is renamed onto ``path`` (keeping the permission bits of a file it
    replaces). When the block raises, the temporary file is deleted, ``path`` is unchanged and the
    exception propagates.
    """
    if mode not in _WRITE_MODES:
        raise ValueError(f"atomic_write supports modes {sorted(_WRITE_MODES)}, not {mode!r}")
    target = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(target)
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        text_options = {} if "b" in mode else {"encoding": encoding}
        with os.fdopen(fd, mode, **text_options) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _permissions_for(target))
        os.replace(temporary, target)
    except BaseException:
        _remove_quietly(temporary)
        raise
    _fsync_directory(directory)
