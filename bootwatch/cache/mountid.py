"""Which mounted filesystem a directory is on, and whether it is the root of a mount.

``os.path.ismount`` compares a directory with its parent and cannot see a bind mount of a
directory of the same filesystem; the kernel can. :func:`mount_identity` asks ``statx(2)`` for
the mount id (``STATX_MNT_ID``) and whether the directory is a mount's root
(``STATX_ATTR_MOUNT_ROOT``), and reads that mount's line of ``/proc/self/mountinfo``: the
filesystem type, its source, the directory of the filesystem that is mounted there (a bind
mount's root), and the device. ``statvfs`` adds the filesystem id, and ``/dev/disk/by-uuid``
the filesystem UUID where there is one. ``fs_path`` is the directory's path within its
filesystem: the mount's root joined with the directory's path below the mount point.

Mount ids and device numbers may change at a reboot, so :func:`same_filesystem` compares what
stays: the type, the path within the filesystem, and the UUID where both sides have one, else
the filesystem id where both have one, else the device number. Whether the directory is a
mount's root is not compared: a unit's ``ReadWritePaths=/boot`` makes a ``/boot`` directory of
the root filesystem a bind mount of itself in the daemon's mount namespace (root ``/boot``, a
mount root) while a hook in the host's namespace sees it as a directory of the ``/`` mount (root
``/``): the same directory of the same filesystem. An unmounted partition leaves a directory of
another filesystem, and an unmounted bind mount another directory of the same one.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bootwatch import linux

BY_UUID = Path("/dev/disk/by-uuid")

# A mount identity as the references record keeps it (JSON): mount_id, mount_root, dev, type,
# source, root, fs_path, fsid, uuid.
MountIdentity = dict[str, Any]


def _statx_mount(path: Path) -> tuple[int | None, bool | None]:
    """(mount id, is the root of a mount) from statx; None for what the kernel does not tell."""
    try:
        st = linux.statx(path, linux.STATX_MNT_ID)
    except OSError as e:
        if e.errno == errno.ENOSYS:  # a C library without statx
            return None, None
        raise
    mount_root = bool(st.stx_attributes & linux.STATX_ATTR_MOUNT_ROOT) \
        if st.stx_attributes_mask & linux.STATX_ATTR_MOUNT_ROOT else None
    return (int(st.stx_mnt_id) if st.stx_mask & linux.STATX_MNT_ID else None), mount_root


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


def mount_identity(directory: Path, *, mounts: Sequence[linux.MountInfo] | None = None) -> MountIdentity:
    """The mount ``directory`` (or file) is on, as JSON-ready values (see the module docstring).

    ``mounts``: ``/proc/self/mountinfo`` as the caller read it (for several directories at once).
    Raises OSError when the directory or ``/proc/self/mountinfo`` cannot be read: then which
    filesystem is there is unknown.
    """
    real = os.path.realpath(directory)
    st = os.stat(real)
    mnt_id, mount_root = _statx_mount(Path(real))
    line = _mount_of(real, mnt_id, linux.mountinfo() if mounts is None else mounts)
    if mount_root is None:
        mount_root = line.mount_point == real
    below = os.path.relpath(real, line.mount_point)
    fs_path = os.path.normpath(os.path.join(line.root, below)) if below != "." else line.root
    return {"mount_id": line.mount_id, "mount_root": mount_root, "dev": line.dev, "type": line.fstype,
            "source": line.source, "root": line.root, "fs_path": fs_path, "fsid": os.statvfs(real).f_fsid,
            "uuid": _uuid_of(st.st_dev)}


def _mount_of(real: str, mnt_id: int | None, mounts: Sequence[linux.MountInfo]) -> linux.MountInfo:
    """The mountinfo line of mount ``mnt_id``; without one (no ``STATX_MNT_ID`` before Linux
    5.8), the last, longest mount point above the resolved path ``real``."""
    line = next((m for m in mounts if m.mount_id == mnt_id), None) if mnt_id is not None else None
    if line is None:
        best = -1
        for m in mounts:
            point = m.mount_point.rstrip("/")
            if (real == m.mount_point or real.startswith(point + "/")) and len(point) >= best:
                line, best = m, len(point)
    if line is None:
        raise OSError(0, "not found in /proc/self/mountinfo", real)
    return line


def same_filesystem(a: MountIdentity, b: MountIdentity, *, same_directory: bool = True) -> bool:
    """Whether two identities name the same directory of the same filesystem, however mounted
    (``same_directory`` False: the same filesystem, whatever directory of it, as for an entries
    directory reached through a symlink that ostree swaps)."""
    if a.get("type") != b.get("type") or (same_directory and a.get("fs_path") != b.get("fs_path")):
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
