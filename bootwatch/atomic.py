"""Writing files so that a reader sees the old content or the new, never a torn one.

Every file bootwatch writes whole (the index, the derived files, copies of images, restored boot
files, the daemon's status and metrics files) is written the one way of :class:`TempFile`: a new
file created with ``O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK`` (whatever is at its name already,
a symlink or a FIFO planted there, makes it pick another name; nothing existing is ever opened),
written completely (:func:`write_all`), ``fsync``'ed, renamed over the final name (which replaces
the name, never opens or follows what was there) and the directory ``fsync``'ed, so that the
rename survives a crash too. A writer killed on the way leaves a temp file, never a final name
with part of its content. :func:`write_atomically` is that sequence for bytes held in memory;
callers choose the permission and whether the result must survive a crash (``durable``).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from bootwatch.errors import BootwatchError

_CREATE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                 | os.O_CLOEXEC)


def write_all(fd: int, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
    """Write every byte of ``data`` to ``fd`` (at ``offset`` with ``pwrite``, leaving the file
    offset alone): ``write(2)`` may write less than asked (a signal, a nearly full disk), and
    an error after part of it was written raises."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[written:]
        if offset is not None:
            offset += written


def create_exclusive(name: str | os.PathLike[str], mode: int = 0o600, *, dir_fd: int | None = None) -> int:
    """A descriptor of a new, empty regular file ``name`` (relative to ``dir_fd``), for writing.

    ``O_CREAT | O_EXCL`` fails with :class:`FileExistsError` on whatever is at the name, and
    never follows a symlink there; ``O_NOFOLLOW`` says so once more, and ``O_NONBLOCK`` makes
    sure that nothing but a new file could make the open wait.
    """
    return os.open(name, _CREATE_FLAGS, mode, dir_fd=dir_fd)


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable: the directory entry lives in the directory."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:  # fsync's error names no file: name the directory
        raise OSError(e.errno, e.strerror, str(directory)) from None
    finally:
        os.close(fd)


class TempFile:
    """A new file (see :func:`create_exclusive`) that becomes final only by :meth:`commit`.

    Leaving the ``with`` block without a commit removes it, so no half-written file ever carries a
    final name, whatever went wrong (ENOSPC, a signal turned into an exception, a content change).
    """

    def __init__(self, directory: Path, prefix: str, mode: int = 0o600, *,
                 dir_fd: int | None = None) -> None:
        """A file ``<prefix><pid>.<n>`` in ``directory``; each writer has a prefix of its own, by
        which a leftover of a killed run is known. With ``dir_fd`` (an open ``directory``, not
        owned) the file is made and named relative to it."""
        self.directory = directory
        self.dir_fd = dir_fd
        self.path: Path | None = None
        for attempt in range(100):
            candidate = directory / f"{prefix}{os.getpid()}.{time.monotonic_ns():x}.{attempt}"
            try:
                self.fd = create_exclusive(self._name(candidate), mode, dir_fd=dir_fd)
            except FileExistsError:
                continue
            self.path = candidate
            return
        raise BootwatchError("cannot create a unique temporary file", path=directory)

    def _name(self, path: Path) -> str:
        """How ``path`` is named to the kernel: relative to ``dir_fd`` if there is one."""
        return path.name if self.dir_fd is not None else str(path)

    def __enter__(self) -> TempFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._name(self.path), dir_fd=self.dir_fd)
            self.path = None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def detach(self) -> Path:
        """Close the file unsynced and hand it over: the caller now owns (and must remove) it."""
        assert self.path is not None
        self.close()
        path, self.path = self.path, None
        return path

    def commit(self, final: Path, *, replace: bool = True, final_dir_fd: int | None = None,
               durable: bool = True) -> None:
        """fsync, rename over ``final`` and fsync the directory.

        With ``replace`` False an existing ``final`` is kept (link + unlink, which fails with
        EEXIST instead of replacing). With ``final_dir_fd`` (the open directory of ``final``)
        the rename goes to ``final``'s name in it. With ``durable`` False neither the file nor
        the directory is fsynced: a crash may leave the old file or an empty or torn new one, for
        data whose readers check it.
        """
        assert self.path is not None
        if durable:
            os.fsync(self.fd)
        self.close()
        source = self._name(self.path)
        target = final.name if final_dir_fd is not None else str(final)
        if replace:
            os.rename(source, target, src_dir_fd=self.dir_fd, dst_dir_fd=final_dir_fd)
        else:
            try:
                os.link(source, target, src_dir_fd=self.dir_fd, dst_dir_fd=final_dir_fd, follow_symlinks=False)
            finally:
                os.unlink(source, dir_fd=self.dir_fd)
        self.path = None
        if not durable:
            return
        if final_dir_fd is not None:
            os.fsync(final_dir_fd)
        else:
            fsync_directory(final.parent)


def write_atomically(final: Path, data: bytes, *, mode: int, prefix: str, durable: bool = True,
                     final_dir_fd: int | None = None, temp_dir: Path | None = None,
                     temp_dir_fd: int | None = None) -> None:
    """Replace ``final`` with a file holding ``data``, with permission ``mode`` whatever the umask.

    The temp file (``prefix``..., see :class:`TempFile`) is made in ``temp_dir`` (default:
    ``final``'s directory; with ``temp_dir_fd`` relative to that open directory) and renamed to
    ``final`` (relative to ``final_dir_fd`` if given). ``durable`` as in :meth:`TempFile.commit`.
    OSError if anything fails; the temp file is then gone and ``final`` untouched.
    """
    with TempFile(final.parent if temp_dir is None else temp_dir, prefix, dir_fd=temp_dir_fd) as tmp:
        os.fchmod(tmp.fd, mode)
        write_all(tmp.fd, data)
        tmp.commit(final, final_dir_fd=final_dir_fd, durable=durable)
