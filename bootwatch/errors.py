"""The one way bootwatch stops with a user-facing error.

Every error a user can cause or fix is a :class:`BootwatchError`: one line that names the file and
the problem, an optional hint, and the exit code the command line uses. Nothing else is allowed to
reach the user as a traceback.
"""

from __future__ import annotations

import errno as errno_module
import os
import re
from pathlib import Path
from typing import Union

# A file name as bootwatch's errors take it: a str or a pathlib.Path (any os.PathLike of str).
StrPath = Union[str, "os.PathLike[str]"]

# Exit codes, as in sysexits.h where one fits.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3  # `status`: the daemon is not running (as systemctl status says)
EXIT_CONFIG = 78  # EX_CONFIG


class BootwatchError(Exception):
    """An error with a message for humans, an optional hint and an exit code."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None,
                 path: StrPath | None = None) -> None:
        self.message = f"{path}: {message}" if path is not None else message
        self.hint = hint
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class UsageError(BootwatchError):
    """The command line was wrong."""

    exit_code = EXIT_USAGE


class ConfigError(BootwatchError):
    """The configuration is invalid: the daemon must not start."""

    exit_code = EXIT_CONFIG


class UnsafeDirectoryError(BootwatchError):
    """A directory bootwatch writes to failed a security check."""


class CacheMissingError(BootwatchError):
    """The cache directory does not exist, for a command that only reads it (list, show, verify,
    fsck, clean). No directory is no cache yet, not an empty cache: answering "nothing cached"
    would hide a mistyped --cache-dir or [paths] cache, and creating it would write where
    nothing was asked to be written."""

    def __init__(self, directory: StrPath) -> None:
        super().__init__("no cache directory: bootwatch has cached nothing here yet", path=directory,
                         hint="the daemon (bootwatch run, or its service) or 'bootwatch add' creates it with "
                              "the first image; if you meant another cache, check --cache-dir or [paths] cache")


class UnsafePathError(BootwatchError):
    """A path would escape the boot or the cache directory."""


class DaemonRunningError(BootwatchError):
    """Another daemon already runs on the cache (it holds the daemon lock)."""


class DeletionsBlockedError(BootwatchError):
    """Deleting now could destroy what is still needed: the boot entries cannot be read, or a
    repair of a corrupt index did not complete. Nothing was changed; the daemon's jobs skip."""


class NotRegularFileError(BootwatchError, OSError):
    """A file bootwatch was to read is a FIFO, a device, a socket or a directory.

    It is refused before the first read, so that a FIFO planted under a name bootwatch reads can
    never make it block. It is also an :class:`OSError`: whoever treats a file it cannot read as
    unreadable (an image that fails verification, a boot file skipped by a pass) handles this the
    same way, and ``strerror`` says what the file is.
    """

    def __init__(self, path: StrPath, kind: str, *, hint: str | None = None,
                 what: str | None = None) -> None:
        """``what`` replaces "is a KIND, not a regular file": a regular file on procfs, or one
        reached through a symlink out of the filesystem it must be on."""
        what = what or f"is a {kind}, not a regular file"
        super().__init__(f"{what}; not reading it", path=path, hint=hint)
        self.strerror = what


class FileTooLargeError(BootwatchError, OSError):
    """A file bootwatch reads whole is larger than the bound for what it is (see
    :func:`bootwatch.safety.read_regular`): nothing bootwatch or boom writes is that large, and
    reading it into memory could take gigabytes (a sparse file costs nothing to make).

    An :class:`OSError` (``EFBIG``) as :class:`NotRegularFileError` is: whoever treats a file it
    cannot read as unreadable or missing (a derived file) handles this the same way.
    """

    def __init__(self, path: StrPath, limit: int) -> None:
        super().__init__(f"is larger than {format_size(limit)}; not reading it", path=path)
        self.errno = errno_module.EFBIG
        self.strerror = f"is larger than {format_size(limit)}"
        self.limit = limit


def format_size(size: int) -> str:
    """``67108864`` -> ``64 MiB``: a bound as a person reads it."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


class ReferencesUnknownError(DeletionsBlockedError):
    """The boot entries cannot be read, or cannot be trusted (see bootwatch.cache.references.References)."""


class StorageError(BootwatchError):
    """The file system under a cache file failed: full (ENOSPC), read-only (EROFS), broken (EIO).

    Names the file and the errno (``errno`` and ``filename`` for whoever rate-limits reports
    of the same failure, as the daemon does).
    """

    def __init__(self, err: OSError, path: StrPath, what: str, *, hint: str | None = None) -> None:
        self.errno = err.errno or 0
        self.filename = str(path)
        name = errno_module.errorcode.get(self.errno, str(self.errno))
        reason = os.strerror(self.errno).lower() if self.errno else str(err)
        super().__init__(f"{what}: {reason} ({name})", path=path, hint=hint)


class CacheReadOnlyError(StorageError):
    """The cache is on a read-only file system: it can be read (restores work), not changed."""

    def __init__(self, path: StrPath, what: str) -> None:
        super().__init__(OSError(errno_module.EROFS, os.strerror(errno_module.EROFS)), path, what,
                         hint="remount the cache's file system read-write; restores from it go on meanwhile")


def storage_error(err: OSError, path: StrPath, what: str) -> BootwatchError:
    """The error to raise for ``err`` on a cache file: a :class:`StorageError` for a failing file
    system, otherwise a plain error naming the file."""
    if err.errno == errno_module.EROFS:
        return CacheReadOnlyError(path, what)
    if err.errno in STORAGE_ERRNOS:
        hint = ("free space in the cache's file system, e.g. with 'bootwatch clean'"
                if err.errno in (errno_module.ENOSPC, errno_module.EDQUOT) else None)
        return StorageError(err, path, what, hint=hint)
    return BootwatchError(f"{what}: {os.strerror(err.errno).lower() if err.errno else err}", path=path)


# The errnos that say the file system (not the file, not the caller) is the problem.
STORAGE_ERRNOS = frozenset({errno_module.ENOSPC, errno_module.EDQUOT, errno_module.EIO, errno_module.EROFS,
                            errno_module.EUCLEAN})


class IndexCorruptError(BootwatchError):
    """``cacheindex.json`` cannot be read or does not have boom's structure."""

    def __init__(self, message: str, *, path: StrPath) -> None:
        super().__init__(message, path=path,
                         hint="nothing was changed; run 'bootwatch fsck --repair' to rebuild the "
                              "index from the images (the corrupt file is kept)")


class IndexMissingError(IndexCorruptError):
    """``cacheindex.json`` is missing while the cache holds images: the index was lost, and what
    the images are cached for is unknown. Not an empty cache (that has neither), so nothing may
    be deleted on its strength; ``fsck --repair`` rebuilds an index from the images."""

    def __init__(self, path: StrPath, images: int) -> None:
        BootwatchError.__init__(
            self, f"is missing, but the cache holds {images} image{'' if images == 1 else 's'}: the index was "
            "lost (this is not an empty cache), so which paths they keep is unknown", path=path,
            hint="nothing was changed; run 'bootwatch fsck --repair' to rebuild the index from the images "
                 "and the boot files (it deletes no image)")


class ContentChangedError(BootwatchError):
    """A file changed while it was being read: the digest describes no real version of it.

    Not an OSError: nothing went wrong with the file, it was caught between two versions. A
    caller skips it for now (the next pass, or the writer's close, brings it back) and never
    takes a digest of it as the file's content.
    """

    def __init__(self, path: StrPath, message: str = "changed while it was being read",
                 *, hint: str | None = "try again once it is complete") -> None:
        super().__init__(message, path=path, hint=hint)
        self.path = Path(path)


class OpenForWritingError(ContentChangedError):
    """Another process has the file open for writing, or opened it while it was being read.

    Its content is not a version anyone finished: it is read again once the writer closed it
    (the daemon on the writer's close, or on its retry; a command when run again).
    """

    def __init__(self, path: StrPath,
                 message: str = "is still being written: another process has it open for writing") -> None:
        super().__init__(path, message, hint="try again once the program writing it has finished "
                                             "(the daemon caches it by itself when the writer closes it)")


def describe_oserror(err: OSError, *, path: StrPath | None = None) -> str:
    """``[Errno 28] No space left on device: 'x'`` becomes ``x: no space left on device``.

    ``path`` names the file when the error does not: an error of a read through a descriptor
    carries the descriptor's number as its "filename", which names nothing for a reader.
    """
    text = os.strerror(err.errno).lower() if err.errno else str(err)
    name = path if path is not None else err.filename
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    return f"{name}: {text}" if isinstance(name, (str, os.PathLike)) and name else text


# C0 controls, DEL and C1 controls: what a terminal may take as the start of an escape sequence.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with every control character written as ``\\xNN``, so that a file name cannot
    move the cursor, recolour or retitle a terminal, or forge a log line. With ``lines``, newlines
    and tabs stay (multi-line output, a traceback). A byte of a file name that is not UTF-8 (read
    as a lone surrogate, ``os.fsdecode``) is written as ``\\xNN`` too: a UTF-8 terminal or
    pipe could not take it."""
    pattern = _CONTROL_BUT_LINES if lines else _CONTROL
    return pattern.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
