"""Which mounted filesystem a directory is on, and whether it is the root of a mount.

``os.path.ismount`` compares a directory with its parent and cannot see a bind mount of a
directory of the same filesystem; the kernel can. :func:`mount_identity` asks ``statx(2)`` for
the mount id (``STATX_MNT_ID``) and whether the directory is a mount's root
(``STATX_ATTR_MOUNT_ROOT``), and reads that mount's line of ``/proc/self/mountinfo``: the
filesystem type, its source, the directory of the filesystem that is mounted there (a bind
mount's root), and the device. ``statvfs`` adds the filesystem id, and ``/dev/disk/by-uuid``
the filesystem UUID where there is one.

Mount ids and device numbers may change at a reboot, so :func:`same_filesystem` compares what
stays: the type, the mounted root, and the UUID where both sides have one, else the filesystem
id where both have one, else the device number.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import stat
import sys
from pathlib import Path
from typing import Any

MOUNTINFO = Path("/proc/self/mountinfo")
BY_UUID = Path("/dev/disk/by-uuid")

AT_FDCWD = -100
STATX_MNT_ID = 0x1000
STATX_ATTR_MOUNT_ROOT = 0x2000
_STATX_SIZE = 256
_OFF_MASK, _OFF_ATTRIBUTES, _OFF_ATTRIBUTES_MASK, _OFF_MNT_ID = 0, 8, 56, 144

MountIdentity = dict[str, Any]


@functools.lru_cache(maxsize=1)
def libc_statx() -> Any | None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fn = getattr(libc, "statx", None)  # glibc 2.28 and later
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
        fn.restype = ctypes.c_int
    return fn


def _statx_mount(path: Path) -> tuple[int | None, bool | None]:
    """(mount id, is the root of a mount) from statx; None for what the kernel does not tell."""
    fn = libc_statx()
    if fn is None:
        return None, None
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if fn(AT_FDCWD, os.fsencode(path), 0, STATX_MNT_ID, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    raw = buf.raw

    def field(offset: int, size: int) -> int:
        return int.from_bytes(raw[offset:offset + size], sys.byteorder)

    mask, attributes = field(_OFF_MASK, 4), field(_OFF_ATTRIBUTES, 8)
    supported, mnt_id = field(_OFF_ATTRIBUTES_MASK, 8), field(_OFF_MNT_ID, 8)
    return (mnt_id if mask & STATX_MNT_ID else None,
            bool(attributes & STATX_ATTR_MOUNT_ROOT) if supported & STATX_ATTR_MOUNT_ROOT else None)


def unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mountinfo() -> list[dict[str, Any]]:
    lines = []
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-", 6)
                lines.append({"id": int(fields[0]), "dev": fields[2], "root": unescape_mountinfo(fields[3]),
                              "mount_point": unescape_mountinfo(fields[4]), "type": fields[sep + 1],
                              "source": unescape_mountinfo(fields[sep + 2]) if len(fields) > sep + 2 else ""})
            except (ValueError, IndexError):
                continue
    return lines


def _uuid_of(dev: int) -> str | None:
    """The UUID udev names for the block device ``dev``, if any (none for tmpfs, btrfs subvolumes)."""
    try:
        names = os.listdir(BY_UUID)
    except OSError:
        return None
    for name in sorted(names):
        try:
            st = os.stat(BY_UUID / name)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode) and st.st_rdev == dev:
            return name
    return None


def mount_identity(directory: Path) -> MountIdentity:
    """The mount ``directory`` is on, as JSON-ready values (see the module docstring).

    Raises OSError when the directory or ``/proc/self/mountinfo`` cannot be read: then which
    filesystem is there is unknown.
    """
    real = os.path.realpath(directory)
    st = os.stat(real)
    mnt_id, mount_root = _statx_mount(Path(real))
    mounts = _mountinfo()
    line: dict[str, Any] | None = None
    if mnt_id is not None:
        line = next((m for m in mounts if m["id"] == mnt_id), None)
    if line is None:  # no STATX_MNT_ID (before Linux 5.8): the last, longest mount point above it
        best = -1
        for m in mounts:
            point = m["mount_point"].rstrip("/")
            if (real == m["mount_point"] or real.startswith(point + "/")) and len(point) >= best:
                line, best = m, len(point)
    if line is None:
        raise OSError(0, "not found in /proc/self/mountinfo", real)
    if mount_root is None:
        mount_root = line["mount_point"] == real
    return {"mount_id": line["id"], "mount_root": mount_root, "dev": line["dev"], "type": line["type"],
            "source": line["source"], "root": line["root"], "fsid": os.statvfs(real).f_fsid,
            "uuid": _uuid_of(st.st_dev)}


def same_filesystem(a: MountIdentity, b: MountIdentity) -> bool:
    """Whether two identities name the same mounted filesystem (and the same part of it)."""
    if a.get("type") != b.get("type") or a.get("root") != b.get("root"):
        return False
    if a.get("uuid") and b.get("uuid"):
        return bool(a["uuid"] == b["uuid"])
    if a.get("fsid") and b.get("fsid"):
        # From the UUID on ext4 and btrfs (whose device numbers are anonymous, given out at
        # mount time), random per tmpfs mount, from the device number on xfs and vfat.
        return bool(a["fsid"] == b["fsid"])
    return bool(a.get("dev") == b.get("dev"))


def describe(identity: MountIdentity) -> str:
    """One short phrase for a journal line: ``ext4 /dev/vda1`` (root ``/boot``)."""
    text = f"{identity.get('type')} {identity.get('source')}"
    if identity.get("root") not in (None, "/"):
        text += f" (its {identity['root']})"
    return text
