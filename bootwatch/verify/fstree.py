"""Check a filesystem image by mounting it read-only and reading every file in it.

The kernel validates the superblock when it mounts, and the directory blocks, inodes and data
blocks (with their checksums, for ext4 metadata_csum, squashfs and erofs compression) as they are
read. So walking the whole tree and reading every regular file to the end is the check: a bad
superblock fails the mount, a damaged or missing block fails a read with ``EIO`` (or ``EUCLEAN``,
``EINVAL``...).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable

from bootwatch.errors import BootwatchError, NotRegularFileError
from bootwatch.safety import open_regular
from bootwatch.verify.loop import loop_available
from bootwatch.verify.mount import MountError, mounted_image

__all__ = ["FsCheckFailed", "FsCheckSkipped", "check_filesystem"]

READ_SIZE = 1 << 20

# Filesystems report corruption with errnos whose strerror() reads oddly: say what they mean.
KERNEL_ERRNO_MEANING = {
    errno.EBADMSG: "bad checksum (EBADMSG)",  # EFSBADCRC in ext4, erofs, xfs
    errno.EUCLEAN: "corrupt filesystem structure (EUCLEAN)",  # EFSCORRUPTED
}


def _describe(err: int) -> str:
    return KERNEL_ERRNO_MEANING.get(err) or os.strerror(err).lower()


class FsCheckFailed(Exception):
    """The filesystem did not mount or could not be read; the message says where and why."""


class FsCheckSkipped(Exception):
    """The check could not run here (no root, no loop devices, no driver); the message says why."""


def _read_file(path: str, buf: bytearray) -> int:
    """Read one regular file to its end; the number of bytes.

    The directory entry's type is the image's word, not the inode's: a FIFO behind a "regular"
    entry would block a plain open for ever. :func:`bootwatch.safety.open_regular` opens without
    blocking and decides on the descriptor; what is not a regular file has nothing to read.
    """
    try:
        fd = open_regular(path)
    except NotRegularFileError:
        return 0
    try:
        total = 0
        while True:
            n = os.readv(fd, [buf])
            if not n:
                return total
            total += n
    finally:
        os.close(fd)


def _read_tree(top: Path, check_deadline: Callable[[], None] | None) -> tuple[int, int]:
    """Read every regular file and symlink below ``top``; (files, bytes). Never follows links.

    An OSError always carries the path it happened on (read(2) errors do not by themselves).
    """
    files = total = 0
    buf = bytearray(READ_SIZE)
    pending: list[str] = [str(top)]
    while pending:
        directory = pending.pop()
        current = directory
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if check_deadline is not None:
                        check_deadline()
                    current = entry.path
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.is_symlink():
                        os.readlink(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += _read_file(entry.path, buf)
                        files += 1
                    current = directory
        except OSError as err:
            raise OSError(err.errno, err.strerror, current) from None
    return files, total


def check_filesystem(image: Path, fstype: str, runtime_dir: Path,
                     check_deadline: Callable[[], None] | None = None) -> str:
    """Mount ``image`` and read it all; a summary, or FsCheckFailed / FsCheckSkipped."""
    reason = loop_available()
    if reason is not None:
        raise FsCheckSkipped(f"not checked: {reason}")
    try:
        with mounted_image(image, runtime_dir, fstype=fstype) as point:
            try:
                files, total = _read_tree(point, check_deadline)
            except OSError as err:
                inside = "/" + os.path.relpath(err.filename, point) if err.filename else ""
                raise FsCheckFailed(f"{image}: {_describe(err.errno or 0)} reading "
                                    f"{inside or 'the tree'} in the {fstype} filesystem") from None
    except MountError as err:
        raise FsCheckFailed(f"{image}: the {fstype} filesystem does not mount: "
                            f"{_describe(err.errno)}") from None
    except BootwatchError as err:
        # No loop device, no driver for this filesystem, an unsafe runtime directory: the
        # machine cannot run the check, which says nothing about the image.
        raise FsCheckSkipped(f"not checked: {err}") from None
    except OSError as err:
        # The walk's own errors were turned into FsCheckFailed above; this is attaching or
        # mounting going wrong for reasons of this machine (ioctl, mkdir...).
        raise FsCheckSkipped(f"not checked: {image}: cannot attach and mount: "
                             f"{os.strerror(err.errno or 0).lower()}") from None
    return f"{fstype} filesystem: read {files} files, {total} bytes"
