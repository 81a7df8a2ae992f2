"""Which file a name holds, and removing a name only while it holds one given file.

A boot file that bootwatch restored may be deleted by bootwatch again, but only that very file.
Its identity (:class:`FileIdentity`) is what ``fstat`` says (device, inode, size, mtime, ctime,
mode, owner), and where the filesystem has them, two values that a new file never shares with a
deleted one whose inode number it got back:

- the birth time, ``statx(STATX_BTIME)``, in nanoseconds where the filesystem keeps them (ext4
  with 256-byte inodes, btrfs, xfs, tmpfs);
- the inode generation, ``ioctl(FS_IOC_GETVERSION)`` (ext2/3/4, btrfs, xfs, f2fs), which the
  filesystem changes whenever it hands out an inode number again.

On a filesystem with one-second timestamps (ext2, ext3, ext4 with 128-byte inodes) a kernel
removed and installed again within the second of a restore gets the freed inode number back
with the same size, mode, owner, mtime (``cp -p``) and ctime: only the generation tells it from
the restored file. A filesystem that has neither (vfat has no generation; its birth time is kept
in 10 ms) leaves the weaker identity, which such a reinstall within the same timestamp tick can
match: bootwatch records what the filesystem offers and compares exactly that (a value that was
there at the restore and is not now, or the other way round, is another file).

:func:`remove_if_same` deletes a name only while it holds the file an identity describes, also
against a rename over the name at the same moment (a package manager installing its kernel): see
its docstring.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from bootwatch import linux
from bootwatch.cache.hashing import StatSignature

# The prefix of the name a boot file is renamed to while remove_if_same decides (see there).
ASIDE_PREFIX = ".bootwatch-aside."


def birth_time_ns(fd: int) -> int | None:
    """The birth time of the open file, if the filesystem (and the C library) gives one."""
    try:
        st = linux.statx(b"", linux.STATX_BTIME, dir_fd=fd, flags=linux.AT_EMPTY_PATH)
    except OSError:
        return None
    return st.stx_btime.ns() if st.stx_mask & linux.STATX_BTIME else None


def inode_generation(fd: int) -> int | None:
    """The inode generation of the open file, if the filesystem has one (ENOTTY where it has none)."""
    try:
        return linux.inode_generation(fd)
    except OSError:
        return None


@dataclass(frozen=True)
class FileIdentity:
    """One file, unchanged: equal identities are the same inode with no change in between."""

    signature: StatSignature
    mode: int
    uid: int
    gid: int
    birth_ns: int | None  # None: the filesystem keeps no birth time
    generation: int | None  # None: the filesystem has no inode generation

    @classmethod
    def of_fd(cls, fd: int) -> FileIdentity:
        st = os.fstat(fd)
        return cls(StatSignature.of(st), st.st_mode, st.st_uid, st.st_gid, birth_time_ns(fd), inode_generation(fd))

    def to_json(self) -> dict[str, Any]:
        return {"stat": self.signature.to_json(), "mode": self.mode, "uid": self.uid, "gid": self.gid,
                "birth_ns": self.birth_ns, "generation": self.generation}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> FileIdentity | None:
        """None for anything but a complete, well-typed identity (the index is untrusted).

        A record without ``birth_ns`` or ``generation`` (an older bootwatch) has them as None, so
        it matches only a file on a filesystem without them: elsewhere its file is no longer
        known as bootwatch's, and is never deleted."""
        signature = StatSignature.from_json(value.get("stat"))
        mode, uid, gid, birth_ns, generation = (_int(value.get(key))
                                                for key in ("mode", "uid", "gid", "birth_ns", "generation"))
        if signature is None or mode is None or uid is None or gid is None \
                or (birth_ns is None) != (value.get("birth_ns") is None) \
                or (generation is None) != (value.get("generation") is None):
            return None
        return cls(signature, mode, uid, gid, birth_ns, generation)

    @property
    def inode(self) -> tuple[int, int]:
        return self.signature.device, self.signature.inode


def _int(value: object) -> int | None:
    """``value`` if it is an int (JSON's true and false are not), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _open_name(name: str, dir_fd: int) -> int | None:
    """A descriptor of the regular file the name holds itself (never what a symlink names); None if
    there is none (no such name, or a symlink, FIFO, directory...)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symlink
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def identity_at(path: Path) -> FileIdentity | None:
    """The identity of the regular file at the name ``path`` (its last component is not followed);
    None if there is none. OSError if it cannot be told (EACCES...)."""
    with _directory(path.parent) as dir_fd:
        fd = _open_name(path.name, dir_fd)
        if fd is None:
            return None
        try:
            return FileIdentity.of_fd(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _directory(directory: Path) -> Iterator[int]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def rename_noreplace(src: str, dst: str, *, dir_fd: int) -> None:
    """:func:`bootwatch.linux.renameat2` with ``RENAME_NOREPLACE`` within one directory:
    FileExistsError if ``dst`` exists. OSError(EINVAL) where the filesystem cannot rename without
    replacing atomically."""
    linux.renameat2(src, dst, linux.RENAME_NOREPLACE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


class Removal(Enum):
    REMOVED = "removed"  # the name held the file, and it is deleted
    GONE = "gone"  # nothing of that name (any more)
    OTHER = "other"  # the name holds another file (or one changed since); left as it is
    KEPT_ASIDE = "kept aside"  # another file came meanwhile and one more appeared at the name: both kept
    UNSUPPORTED = "unsupported"  # no aside name to be had (see remove_if_same): nothing deleted


@dataclass(frozen=True)
class RemovalResult:
    outcome: Removal
    aside: Path | None = None  # KEPT_ASIDE: where the file that is not bootwatch's now is


def aside_name(name: str) -> str:
    return f"{ASIDE_PREFIX}{os.getpid()}.{time.monotonic_ns():x}.{name}"


def original_name(aside: str) -> str | None:
    """The name an :func:`aside_name` was made for; None if ``aside`` is not one."""
    if not aside.startswith(ASIDE_PREFIX):
        return None
    parts = aside[len(ASIDE_PREFIX):].split(".", 2)
    return parts[2] if len(parts) == 3 and parts[2] not in ("", ".", "..") else None


def remove_if_same(path: Path, expected: FileIdentity) -> RemovalResult:
    """Delete the name ``path`` only while it holds the very file ``expected`` describes.

    Checking the name and then unlinking it would delete whatever a rename put there in between
    (a package manager installing its kernel at that moment). So the name is never unlinked:

    1. the name is opened (``O_NOFOLLOW``) and the descriptor's identity compared with
       ``expected``; the open descriptor keeps that inode, and so its number, from being reused;
    2. the name is renamed aside, within its directory, to a new name (:data:`ASIDE_PREFIX`,
       ``renameat2(RENAME_NOREPLACE)``, so nothing is replaced); the name is now free, and a
       package's rename onto it meanwhile lands there and stays;
    3. what was moved is ``lstat``'ed: the inode checked in 1 is unlinked under its aside name;
       anything else (renamed over the name between 1 and 2) is renamed back with
       ``RENAME_NOREPLACE``. If that fails because yet another file appeared at the name, both
       stay: :attr:`Removal.KEPT_ASIDE` says where, for the caller to say.

    (The ctime is compared in 1 only: the rename of 2 sets it. What could change the checked inode
    between 1 and 2 is a write into bootwatch's own restored copy within those microseconds.)

    A killed run can leave a file under its aside name: :func:`put_back` renames it back.
    """
    with _directory(path.parent) as dir_fd:
        fd = _open_name(path.name, dir_fd)
        if fd is None:
            return RemovalResult(Removal.GONE if not os.path.lexists(path) else Removal.OTHER)
        try:
            if FileIdentity.of_fd(fd) != expected:
                return RemovalResult(Removal.OTHER)
            checked = os.fstat(fd)
            aside = aside_name(path.name)
            try:
                rename_noreplace(path.name, aside, dir_fd=dir_fd)
            except FileNotFoundError:
                return RemovalResult(Removal.GONE)
            except OSError as e:
                # The filesystem cannot rename without replacing, or the name is too long for an
                # aside name: the file stays (the one safe way to delete it is not there).
                if e.errno in (errno.EINVAL, errno.ENOSYS, errno.ENAMETOOLONG):
                    return RemovalResult(Removal.UNSUPPORTED)
                raise  # EEXIST: an aside name of this process and nanosecond exists: not ours to touch
            moved = os.stat(aside, dir_fd=dir_fd, follow_symlinks=False)
            if (moved.st_dev, moved.st_ino) == (checked.st_dev, checked.st_ino):
                os.unlink(aside, dir_fd=dir_fd)
                os.fsync(dir_fd)
                return RemovalResult(Removal.REMOVED)
            try:
                rename_noreplace(aside, path.name, dir_fd=dir_fd)
            except FileExistsError:
                os.fsync(dir_fd)
                return RemovalResult(Removal.KEPT_ASIDE, path.parent / aside)
            os.fsync(dir_fd)
            return RemovalResult(Removal.OTHER)
        finally:
            os.close(fd)


def put_back(aside: Path) -> Path | None:
    """Rename a file a killed :func:`remove_if_same` left under its aside name back to its name
    (never replacing anything). Returns that name, or None if something else holds it now (then
    both stay) or ``aside`` is no aside name."""
    name = original_name(aside.name)
    if name is None:
        return None
    with _directory(aside.parent) as dir_fd:
        try:
            rename_noreplace(aside.name, name, dir_fd=dir_fd)
        except FileExistsError:
            return None
        os.fsync(dir_fd)
    return aside.parent / name
