"""The Linux kernel interfaces that Python's ``os`` and ``fcntl`` do not wrap, in one place.

The C library is loaded once (:func:`libc`, with ``use_errno`` so that a failed call's errno can
be read), each function bound once with its argument types, and each call turns a failure into an
:class:`OSError` with that errno. The ctypes structures mirror the kernel's headers
(``linux/stat.h``, glibc's ``bits/statfs.h``); the ioctl and flag numbers are the kernel's.

Also here: reading what the kernel says in ``/proc/self/mountinfo`` and ``/proc/PID/stat``, the
two text formats with a quoting rule of their own. This module knows the kernel, nothing of
bootwatch: the cache and the image checks (``verify/``) both build on it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# fcntl.h
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000

# linux/stat.h: what statx(2) is asked for (``mask``) and what it says of a file (``attributes``).
STATX_BTIME = 0x800
STATX_MNT_ID = 0x1000
STATX_ATTR_MOUNT_ROOT = 0x2000

# linux/fs.h
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# _IOR('v', 1, long): the kernel writes an int through it, whatever size the number encodes.
FS_IOC_GETVERSION = (2 << 30) | (struct.calcsize("l") << 16) | (ord("v") << 8) | 1
# _IOW(0x94, 9, int)
FICLONE = 0x40049409
SYNC_FILE_RANGE_WRITE = 2

# File leases (linux/fcntl.h: F_LINUX_SPECIFIC_BASE + 0 and + 1 on every architecture) and the
# signal a lease break sends (F_SETSIG: 10 in asm-generic/fcntl.h, another number on parisc, so
# Python's own where it has one).
F_SETLEASE: int = getattr(fcntl, "F_SETLEASE", 1024)
F_GETLEASE: int = getattr(fcntl, "F_GETLEASE", 1025)
F_SETSIG: int = getattr(fcntl, "F_SETSIG", 10)

# linux/mount.h
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PROC = Path("/proc")
MOUNTINFO = PROC / "self" / "mountinfo"


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library Python itself runs on (no ``ldconfig`` lookup), with errno kept per call."""
    return ctypes.CDLL(None, use_errno=True)


def _function(name: str, argtypes: list[Any]) -> Any | None:
    """``name`` of :func:`libc`, bound with its argument types and an int result; None where this
    C library lacks it (statx and renameat2 came with glibc 2.28)."""
    fn = getattr(libc(), name, None)
    if fn is not None:
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int
    return fn


def _check(result: int, *names: str | None) -> None:
    """Raise the errno of a failed call (-1) as :class:`OSError` naming ``names``."""
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), *names)


def _missing(name: str, path: str | None = None) -> OSError:
    return OSError(errno.ENOSYS, f"{name}: {os.strerror(errno.ENOSYS)} in this C library", path)


# ------------------------------------------------------------------------------------ statx

class StatxTimestamp(ctypes.Structure):
    """``struct statx_timestamp``: seconds and nanoseconds since the epoch."""

    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("reserved", ctypes.c_int32)]

    def ns(self) -> int:
        return int(self.tv_sec) * 1_000_000_000 + int(self.tv_nsec)


class Statx(ctypes.Structure):
    """``struct statx`` (linux/stat.h, 256 bytes). ``stx_mask`` says which fields the kernel
    filled: a field whose bit is not set is not known for this file, whatever it holds."""

    _fields_ = [
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", StatxTimestamp),
        ("stx_btime", StatxTimestamp),
        ("stx_ctime", StatxTimestamp),
        ("stx_mtime", StatxTimestamp),
        ("stx_rdev_major", ctypes.c_uint32),
        ("stx_rdev_minor", ctypes.c_uint32),
        ("stx_dev_major", ctypes.c_uint32),
        ("stx_dev_minor", ctypes.c_uint32),
        ("stx_mnt_id", ctypes.c_uint64),
        ("stx_dio_mem_align", ctypes.c_uint32),
        ("stx_dio_offset_align", ctypes.c_uint32),
        ("spare3", ctypes.c_uint64 * 12),
    ]


@functools.cache
def _statx() -> Any | None:
    return _function("statx", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p])


def statx(path: str | bytes | os.PathLike[str], mask: int, *, dir_fd: int = AT_FDCWD, flags: int = 0) -> Statx:
    """``statx(2)``: what the kernel knows of ``path`` (relative to ``dir_fd``; ``b""`` with
    ``AT_EMPTY_PATH`` is ``dir_fd`` itself), asking for the fields of ``mask``.

    Unlike ``stat(2)`` it tells the birth time (``STATX_BTIME``, where the filesystem keeps one),
    the id of the mount the file is on (``STATX_MNT_ID``, Linux 5.8) and whether the file is the
    root of a mount (``STATX_ATTR_MOUNT_ROOT``, Linux 5.8, valid where ``stx_attributes_mask``
    has it): a bind mount of a directory of the same filesystem, which comparing device numbers
    with the parent cannot see. OSError with errno ENOSYS where the C library has no statx.
    """
    fn = _statx()
    name = os.fsencode(path)
    if fn is None:
        raise _missing("statx", os.fsdecode(name))
    buf = Statx()
    _check(fn(dir_fd, name, flags, mask, ctypes.byref(buf)), os.fsdecode(name))
    return buf


# ------------------------------------------------------------------------------- renameat2

@functools.cache
def _renameat2() -> Any | None:
    return _function("renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint])


def renameat2(src: str, dst: str, flags: int, *, src_dir_fd: int = AT_FDCWD, dst_dir_fd: int = AT_FDCWD) -> None:
    """``renameat2(2)``. With ``RENAME_NOREPLACE`` the rename fails with EEXIST
    (:class:`FileExistsError`) instead of replacing what is at ``dst``, atomically: no check
    and rename with a moment in between. ``RENAME_EXCHANGE`` swaps the two names atomically (both
    must exist). EINVAL where the filesystem cannot do that (NFS, older vfat); ENOSYS where the C
    library has no renameat2."""
    fn = _renameat2()
    if fn is None:
        raise _missing("renameat2", src)
    _check(fn(src_dir_fd, os.fsencode(src), dst_dir_fd, os.fsencode(dst), flags), src, None, dst)


# ------------------------------------------------------------------ writeback and fstatfs

@functools.cache
def _syncfs() -> Any | None:
    return _function("syncfs", [ctypes.c_int])


def syncfs(fd: int, name: str | os.PathLike[str] | None = None) -> None:
    """``syncfs(2)``: write back every dirty page of the filesystem that holds the open ``fd``.

    Since Linux 5.8 it reports a writeback error that happened on the filesystem since ``fd`` was
    opened (errseq), so one call can stand for the fsyncs of many files. ``name`` names the
    filesystem in the error."""
    fn = _syncfs()
    shown = None if name is None else os.fspath(name)
    if fn is None:
        raise _missing("syncfs", shown)
    _check(fn(fd), shown)


@functools.cache
def _sync_file_range() -> Any | None:
    return _function("sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])


def sync_file_range(fd: int, offset: int, nbytes: int, flags: int) -> None:
    """``sync_file_range(2)``. With ``SYNC_FILE_RANGE_WRITE`` it starts writing the dirty pages
    of the range (``nbytes`` 0: to the end of the file) back without waiting. It makes nothing
    durable (no device cache flush, no metadata): a hint that the disk may start now."""
    fn = _sync_file_range()
    if fn is None:
        raise _missing("sync_file_range")
    _check(fn(fd, offset, nbytes, flags))


class StatFs(ctypes.Structure):
    """glibc's ``struct statfs`` (bits/statfs.h, without ``_FILE_OFFSET_BITS=64``): what
    ``fstatfs(2)`` says of a filesystem. ``f_type`` is its magic number (linux/magic.h)."""

    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


@functools.cache
def _fstatfs() -> Any | None:
    return _function("fstatfs", [ctypes.c_int, ctypes.POINTER(StatFs)])


def filesystem_type(fd: int) -> int:
    """``fstatfs(2)``'s ``f_type`` of the filesystem the open ``fd`` is on, as the unsigned
    32-bit magic of linux/magic.h (``os.statvfs`` does not give it)."""
    fn = _fstatfs()
    if fn is None:
        raise _missing("fstatfs")
    buf = StatFs()
    _check(fn(fd, ctypes.byref(buf)))
    return int(buf.f_type) & 0xFFFFFFFF


# ------------------------------------------------------------------------------------ ioctls

def inode_generation(fd: int) -> int:
    """``ioctl(FS_IOC_GETVERSION)``: the inode generation of the open file. ext2/3/4, btrfs, xfs
    and f2fs change it whenever they hand an inode number out again, so it tells a new file from
    a deleted one whose number it got back. OSError (ENOTTY) where the filesystem has none."""
    raw = fcntl.ioctl(fd, FS_IOC_GETVERSION, bytes(8))
    return int(struct.unpack_from("=I", raw, 0)[0])


def reflink(src_fd: int, dst_fd: int) -> None:
    """``ioctl(FICLONE)``: make ``dst_fd`` share all of ``src_fd``'s extents (btrfs, XFS with
    reflink): a copy that costs no data written. OSError (EOPNOTSUPP, EXDEV, EINVAL) where the
    filesystem cannot, or the two are on different filesystems."""
    fcntl.ioctl(dst_fd, FICLONE, src_fd)


# ------------------------------------------------------------------------------------ btrfs

# linux/btrfs.h and btrfs_tree.h: both ioctls take a 4096-byte structure, read and written.
_BTRFS_ARGS_SIZE = 4096
BTRFS_IOC_TREE_SEARCH = (3 << 30) | (_BTRFS_ARGS_SIZE << 16) | (0x94 << 8) | 17
BTRFS_IOC_INO_LOOKUP = (3 << 30) | (_BTRFS_ARGS_SIZE << 16) | (0x94 << 8) | 18
BTRFS_ROOT_TREE_OBJECTID = 1
BTRFS_ROOT_TREE_DIR_OBJECTID = 6
BTRFS_FS_TREE_OBJECTID = 5
"""The id of the top-level subvolume."""
BTRFS_FIRST_FREE_OBJECTID = 256
"""The inode number of every subvolume's root directory."""
BTRFS_DIR_ITEM_KEY = 84
BTRFS_ROOT_BACKREF_KEY = 144
_SEARCH_KEY = struct.Struct("=7Q4I4Q")  # struct btrfs_ioctl_search_key: 104 bytes
_SEARCH_HEADER = struct.Struct("=3Q2I")  # struct btrfs_ioctl_search_header: 32 bytes
_DIR_ITEM = struct.Struct("<QBQQHHB")  # struct btrfs_dir_item (packed): location key, transid, lengths, type
_ROOT_REF = struct.Struct("<QQH")  # struct btrfs_root_ref (packed): dirid, sequence, name_len
_U64_MAX = (1 << 64) - 1


def btrfs_tree_search(fd: int, tree_id: int, objectid: int, item_type: int,
                      max_items: int = 16) -> list[tuple[int, bytes]]:
    """``ioctl(BTRFS_IOC_TREE_SEARCH)``: the items of ``tree_id`` with that ``objectid`` and
    type, as ``(offset, item bytes)``, on the btrfs the open ``fd`` (not ``O_PATH``) is on. Needs
    CAP_SYS_ADMIN (EPERM); ENOTTY on another filesystem."""
    key = _SEARCH_KEY.pack(tree_id, objectid, objectid, 0, _U64_MAX, 0, _U64_MAX, item_type, item_type, max_items,
                           0, 0, 0, 0, 0)
    buf = bytearray(key + bytes(_BTRFS_ARGS_SIZE - len(key)))
    fcntl.ioctl(fd, BTRFS_IOC_TREE_SEARCH, buf)
    found = _SEARCH_KEY.unpack_from(buf, 0)[9]  # nr_items: how many the kernel wrote
    items: list[tuple[int, bytes]] = []
    pos = _SEARCH_KEY.size
    for _ in range(found):
        _, item_objectid, offset, kind, length = _SEARCH_HEADER.unpack_from(buf, pos)
        pos += _SEARCH_HEADER.size
        if item_objectid == objectid and kind == item_type:
            items.append((offset, bytes(buf[pos:pos + length])))
        pos += length
    return items


def btrfs_ino_lookup(fd: int, tree_id: int = 0, objectid: int = BTRFS_FIRST_FREE_OBJECTID) -> tuple[int, str]:
    """``ioctl(BTRFS_IOC_INO_LOOKUP)``: the subvolume ``tree_id`` (0: the one ``fd`` is in) and
    the path of its directory ``objectid`` from that subvolume's root (``""`` for the root itself,
    else ending in ``/``). With the defaults, which anyone may ask, the id of ``fd``'s subvolume;
    any other question needs CAP_SYS_ADMIN."""
    buf = bytearray(struct.pack("=QQ", tree_id, objectid) + bytes(_BTRFS_ARGS_SIZE - 16))
    fcntl.ioctl(fd, BTRFS_IOC_INO_LOOKUP, buf)
    tree = struct.unpack_from("=Q", buf, 0)[0]
    name = bytes(buf[16:]).split(b"\0", 1)[0]
    return int(tree), os.fsdecode(name)


def btrfs_default_subvolume(fd: int) -> int:
    """The id of the subvolume a mount without ``subvol=`` or ``subvolid=`` mounts (``btrfs
    subvolume set-default``): the ``default`` entry of the root tree's directory. CAP_SYS_ADMIN."""
    for _, item in btrfs_tree_search(fd, BTRFS_ROOT_TREE_OBJECTID, BTRFS_ROOT_TREE_DIR_OBJECTID, BTRFS_DIR_ITEM_KEY):
        if len(item) < _DIR_ITEM.size:
            continue
        location, _, _, _, _, name_len, _ = _DIR_ITEM.unpack_from(item, 0)
        if item[_DIR_ITEM.size:_DIR_ITEM.size + name_len] == b"default":
            return int(location)
    return BTRFS_FS_TREE_OBJECTID  # no entry: the top level, as the kernel takes it


def btrfs_subvolume_path(fd: int, subvolume: int, *, max_depth: int = 256) -> str:
    """The path of subvolume ``subvolume`` from the top level of the btrfs ``fd`` is on
    (``/@/.snapshots/12/snapshot``; ``/`` for the top level), as ``btrfs subvolume list`` finds
    it: each subvolume's back reference names its parent, the directory in it and its name.
    FileNotFoundError when there is no such subvolume (deleted); CAP_SYS_ADMIN."""
    parts: list[str] = []
    current = subvolume
    for _ in range(max_depth):
        if current == BTRFS_FS_TREE_OBJECTID:
            return "/" + "/".join(reversed(parts))
        refs = btrfs_tree_search(fd, BTRFS_ROOT_TREE_OBJECTID, current, BTRFS_ROOT_BACKREF_KEY, max_items=1)
        if not refs:
            raise FileNotFoundError(errno.ENOENT, f"btrfs subvolume {current} has no back reference (deleted)")
        parent, item = refs[0]
        dirid, _, name_len = _ROOT_REF.unpack_from(item, 0)
        name = os.fsdecode(item[_ROOT_REF.size:_ROOT_REF.size + name_len])
        _, directory = btrfs_ino_lookup(fd, parent, dirid)
        parts.append((directory + name).strip("/"))
        current = parent
    raise OSError(errno.ELOOP, f"btrfs subvolume {subvolume}: more than {max_depth} levels")


# ------------------------------------------------------------------------------------ memory

@functools.cache
def _malloc_trim() -> Any | None:
    return _function("malloc_trim", [ctypes.c_size_t])


def malloc_trim(pad: int = 0) -> None:
    """glibc's ``malloc_trim(3)``: give the free pages of the heap back to the kernel. A no-op
    where the C library has none (musl)."""
    fn = _malloc_trim()
    if fn is not None:
        fn(pad)


# ------------------------------------------------------------------------------------ mounts

@functools.cache
def _mount() -> Any | None:
    return _function("mount", [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p])


@functools.cache
def _umount2() -> Any | None:
    return _function("umount2", [ctypes.c_char_p, ctypes.c_int])


def mount(source: str | None, target: Path, fstype: str | None, flags: int, data: str | None = None) -> None:
    """``mount(2)``; ``data`` is the filesystem's options (``size=64k``). ``source`` and
    ``fstype`` None with a propagation flag (``MS_PRIVATE``) change the mount at ``target``
    instead of making one. ENODEV: the kernel has no driver for ``fstype``; EINVAL: a bad
    superblock."""
    fn = _mount()
    if fn is None:
        raise _missing("mount", str(target))
    _check(fn(source.encode() if source else None, os.fsencode(target), fstype.encode() if fstype else None,
              flags, data.encode() if data else None), str(target))


def umount2(target: Path, flags: int = 0) -> None:
    """``umount2(2)``. EBUSY while a file in it is open; EINVAL if ``target`` is no mount point.
    ``MNT_DETACH`` takes the mount out of the tree at once and frees it when its last user goes."""
    fn = _umount2()
    if fn is None:
        raise _missing("umount2", str(target))
    _check(fn(os.fsencode(target), flags), str(target))


@dataclass(frozen=True)
class MountInfo:
    """One line of ``/proc/PID/mountinfo`` (proc(5)), unescaped."""

    mount_id: int
    dev: str  # major:minor of the filesystem
    root: str  # the directory of the filesystem mounted here (a bind mount's root)
    mount_point: str
    optional: tuple[str, ...]  # "shared:N", "master:N"...
    fstype: str
    source: str


def unescape_mountinfo(field: str) -> str:
    """The kernel escapes space, tab, newline and backslash in mountinfo's fields as ``\\ooo``."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo_line(line: str) -> MountInfo | None:
    """One line: ``36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue``.

    The optional fields (zero or more) end at the ``-``; None for a line that is not of this form.
    """
    fields = line.split()
    try:
        sep = fields.index("-", 6)
        return MountInfo(mount_id=int(fields[0]), dev=fields[2], root=unescape_mountinfo(fields[3]),
                         mount_point=unescape_mountinfo(fields[4]), optional=tuple(fields[6:sep]),
                         fstype=fields[sep + 1],
                         source=unescape_mountinfo(fields[sep + 2]) if len(fields) > sep + 2 else "")
    except (ValueError, IndexError):
        return None


def mountinfo() -> list[MountInfo]:
    """Every mount of our mount namespace, as ``/proc/self/mountinfo`` lists them (parents first)."""
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
        return [info for info in map(parse_mountinfo_line, f) if info is not None]


# ---------------------------------------------------------------------------------- processes

@dataclass(frozen=True)
class ProcStat:
    """What bootwatch reads of ``/proc/PID/stat``: field 3 (state) and field 22 (start time)."""

    state: str  # "R", "S", "D", "Z" (zombie), "X" (dead)...
    start_time: int  # clock ticks after boot; with the PID it names one process of one boot

    @property
    def exited(self) -> bool:
        """A zombie (or dead) process: only its exit status waits; it holds no file any more."""
        return self.state in ("Z", "X")


def process_ids() -> list[str]:
    """The PIDs in ``/proc`` (as its directory names); empty if ``/proc`` cannot be listed."""
    try:
        return [name for name in os.listdir(PROC) if name.isdigit()]
    except OSError:
        return []


def fdinfos_of(pid: str, device: int, inode: int) -> Iterator[bytes]:
    """The ``/proc/PID/fdinfo/FD`` text of each descriptor of process ``pid`` open on the file
    (``device``, ``inode``). Descriptors (and processes) that go away or cannot be inspected
    meanwhile are skipped: the caller asks about a moment, not a promise."""
    base = PROC / pid
    try:
        fds = os.listdir(base / "fd")
    except OSError:
        return
    for fd in fds:
        try:
            st = os.stat(base / "fd" / fd)
            if st.st_ino != inode or st.st_dev != device:
                continue
            yield (base / "fdinfo" / fd).read_bytes()
        except OSError:
            continue


def proc_stat(pid: int) -> ProcStat | None:
    """Fields 3 and 22 of ``/proc/PID/stat``; None if there is no such process.

    Field 2 (comm, in parentheses) may itself hold spaces and ``)``: the fields are counted from
    the last ``)``. Other OSErrors are raised; ValueError for a line that is not of this form.
    """
    try:
        data = (PROC / str(pid) / "stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    close = data.rfind(b")")
    if close < 0:
        raise ValueError(f"{PROC}/{pid}/stat: no ')' after the command name")
    rest = data[close + 1:].split()
    if len(rest) < 22 - 2:
        raise ValueError(f"{PROC}/{pid}/stat: {len(rest) + 2} fields, not 22 or more")
    return ProcStat(state=rest[0].decode("ascii", "replace"), start_time=int(rest[22 - 3]))
