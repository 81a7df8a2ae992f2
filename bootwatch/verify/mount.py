"""Mount a filesystem image read-only on a private directory, and always take it down again.

:func:`mounted_image` detects the filesystem type from its magic (an unknown type is an error,
never a mount attempt), attaches the image to a read-only loop device (:mod:`bootwatch.verify.loop`),
calls ``mount(2)`` with ``MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC`` on a fresh ``0700`` directory
``<runtime_dir>/mnt/<pid>-<starttime>-XXXX`` and yields that directory.

On every way out (an exception, KeyboardInterrupt from a signal, a timeout raised by the caller)
it unmounts, retrying while the kernel answers ``EBUSY`` (someone has a file open in it) and
detaching lazily (``MNT_DETACH``) as a last resort, then clears the loop device and removes the
directory. Signals that arrive while mounting or unmounting are held back with
``pthread_sigmask`` until the bookkeeping is consistent, so a Ctrl-C cannot split a mount from its
cleanup.

A process killed with SIGKILL cannot clean up. Its mount point names its pid and start time, so the
next :func:`mounted_image` (or :func:`sweep_stale_mounts`) finds mounts whose owner is gone and
detaches them; the loop device goes with them because it is set to autoclear.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bootwatch import linux
from bootwatch.errors import BootwatchError
from bootwatch.safety import open_regular
from bootwatch.verify.loop import attached_loop

__all__ = [
    "MountError",
    "UnknownFilesystemError",
    "UnsupportedFilesystemError",
    "detect_fstype",
    "mounted_image",
    "mounts_under",
    "sweep_stale_mounts",
]

# Signals that end a process through Python code (KeyboardInterrupt or a handler that raises).
DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}

# Kernel filesystem names to try for a detected type. ext4 mounts ext2/ext3 when the kernel was
# built without the separate drivers (CONFIG_EXT4_USE_FOR_EXT2).
MOUNT_TYPES = {
    "ext2": ("ext2", "ext4"),
    "ext3": ("ext3", "ext4"),
    "ext4": ("ext4",),
    "vfat": ("vfat",),
    "squashfs": ("squashfs",),
    "erofs": ("erofs",),
    "iso9660": ("iso9660",),
}


class MountError(BootwatchError):
    """``mount(2)`` refused the image: a bad superblock, a truncated image..."""

    def __init__(self, message: str, *, path: Path, errno_: int) -> None:
        super().__init__(message, path=path)
        self.errno = errno_


class UnknownFilesystemError(BootwatchError):
    """The image has no filesystem magic bootwatch knows; it was not mounted."""


class UnsupportedFilesystemError(BootwatchError):
    """The running kernel has no driver for the image's filesystem (``ENODEV``)."""


# --- filesystem detection -------------------------------------------------------------------

def _ext_flavour(sb: bytes) -> str:
    """ext2, ext3 or ext4 from the superblock's feature flags, as blkid decides."""
    compat = int.from_bytes(sb[92:96], "little")
    incompat = int.from_bytes(sb[96:100], "little")
    ro_compat = int.from_bytes(sb[100:104], "little")
    # Anything beyond ext3's incompat set (filetype, recover, journal dev, meta_bg) is ext4.
    if incompat & ~0x001E or ro_compat & ~0x0007:
        return "ext4"
    if compat & 0x0004:  # has_journal
        return "ext3"
    return "ext2"


def _is_vfat(boot: bytes) -> bool:
    """A FAT boot sector: the 0x55AA signature, a FAT type string, a sane BIOS parameter block."""
    if len(boot) < 512 or boot[510:512] != b"\x55\xaa":
        return False
    if boot[54:59] not in (b"FAT12", b"FAT16") and boot[82:87] != b"FAT32" and \
            boot[54:57] != b"FAT":
        return False
    sector = int.from_bytes(boot[11:13], "little")
    cluster = boot[13]
    reserved = int.from_bytes(boot[14:16], "little")
    fats = boot[16]
    return (sector in (512, 1024, 2048, 4096) and cluster != 0 and cluster & (cluster - 1) == 0
            and reserved > 0 and fats in (1, 2))


def detect_fstype_bytes(head: bytes) -> str | None:
    """The filesystem type whose magic is in ``head`` (the first 36 KiB of an image), or None."""
    if head[:4] == b"hsqs":
        return "squashfs"
    if len(head) >= 1028 and head[1024:1028] == b"\xe2\xe1\xf5\xe0":
        return "erofs"
    if len(head) >= 2048 and head[1080:1082] == b"\x53\xef":
        return _ext_flavour(head[1024:2048])
    if head[0x8001:0x8006] == b"CD001":
        return "iso9660"
    if _is_vfat(head[:512]):
        return "vfat"
    return None


def detect_fstype(image: Path) -> str | None:
    """Read the magic numbers of ``image``: "ext2/3/4", "vfat", "squashfs", "erofs", "iso9660"."""
    with os.fdopen(open_regular(image, follow_symlinks=True), "rb") as f:
        return detect_fstype_bytes(f.read(0x9000))


# --- mountinfo ---------------------------------------------------------------------------------

def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below ``directory``, as /proc/self/mountinfo lists them."""
    directory = Path(os.path.realpath(directory))
    points = [Path(info.mount_point) for info in linux.mountinfo()]
    return [point for point in points if point == directory or directory in point.parents]


def _parent_is_shared(directory: Path) -> bool:
    """Whether the mount ``directory`` lives on propagates mounts to peers (``shared:N``)."""
    fd = os.open(directory, os.O_PATH | os.O_CLOEXEC)
    try:
        mnt_id = -1
        for line in Path(f"/proc/self/fdinfo/{fd}").read_text(encoding="ascii").splitlines():
            if line.startswith("mnt_id:"):
                mnt_id = int(line.split()[1])
    finally:
        os.close(fd)
    return any(info.mount_id == mnt_id and any(opt.startswith("shared:") for opt in info.optional)
               for info in linux.mountinfo())


# --- ownership of mount points ----------------------------------------------------------------

def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): pid plus this is unique."""
    try:
        info = linux.proc_stat(pid)
    except OSError:
        return None
    return None if info is None else str(info.start_time)


def _owner_alive(name: str) -> bool:
    """Whether the process that made mount point ``<pid>-<starttime>-XXXX`` still runs."""
    parts = name.split("-", 2)
    if len(parts) != 3 or not parts[0].isdigit():
        return True  # not ours: leave it alone
    return _start_time(int(parts[0])) == parts[1]


def sweep_stale_mounts(runtime_dir: Path) -> list[Path]:
    """Detach and remove the mount points under ``runtime_dir/mnt`` whose process has died.

    Returns the directories removed. Mounts of live processes (another verifier) are left alone.
    """
    root = runtime_dir / "mnt"
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for point in sorted(mounts_under(root), key=lambda p: len(p.parts), reverse=True):
        if point.parent == root and not _owner_alive(point.name):
            with contextlib.suppress(OSError):
                linux.umount2(point, linux.MNT_DETACH)
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False) and not _owner_alive(entry.name):
            with contextlib.suppress(OSError):
                os.rmdir(entry.path)
                removed.append(Path(entry.path))
    return removed


def _mount_root(runtime_dir: Path) -> Path:
    """``runtime_dir/mnt``, created 0700; it must be a real directory owned by us."""
    root = runtime_dir / "mnt"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise BootwatchError("not a private directory owned by us, will not mount there",
                             path=root, hint="remove it; bootwatch recreates it with mode 0700")
    return root


# --- mounting -------------------------------------------------------------------------------

@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM/SIGHUP/SIGQUIT in this thread; they are delivered on exit."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _unmount(target: Path, busy_timeout: float) -> None:
    """Unmount, retrying on EBUSY for ``busy_timeout`` seconds, then detach lazily.

    ``MNT_DETACH`` removes the mount from the tree at once; the kernel keeps the filesystem (and
    with it the loop device) until the last open file in it is closed, then releases both.
    """
    deadline = time.monotonic() + busy_timeout
    delay = 0.005
    while True:
        try:
            linux.umount2(target)
            return
        except OSError as err:
            if err.errno == errno.EINVAL:  # not a mount point (any more)
                return
            if err.errno != errno.EBUSY:
                raise
        if time.monotonic() >= deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    linux.umount2(target, linux.MNT_DETACH)


def _mount_image(device: str, target: Path, fstype: str, image: Path) -> None:
    flags = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
    candidates = MOUNT_TYPES[fstype]
    for name in candidates:
        try:
            linux.mount(device, target, name, flags)
            return
        except OSError as err:
            if err.errno == errno.ENODEV:
                if name != candidates[-1]:
                    continue
                raise UnsupportedFilesystemError(
                    f"the running kernel has no {fstype} driver", path=image) from err
            raise MountError(f"cannot mount as {fstype}: {os.strerror(err.errno or 0)}",
                             path=image, errno_=err.errno or 0) from err


@contextlib.contextmanager
def mounted_image(image: Path, runtime_dir: Path, *, fstype: str | None = None,
                  busy_timeout: float = 2.0) -> Iterator[Path]:
    """Mount ``image`` read-only, nosuid, nodev, noexec under ``runtime_dir/mnt``; yield the point.

    ``fstype`` overrides detection (it must be one of :data:`MOUNT_TYPES`). Raises
    :class:`UnknownFilesystemError` without mounting when the type is not recognised,
    :class:`UnsupportedFilesystemError` when the kernel has no driver for it, :class:`MountError`
    when the kernel refuses the superblock and
    :class:`bootwatch.verify.loop.LoopUnavailableError` when loop devices cannot be used.
    """
    if fstype is None:
        fstype = detect_fstype(image)
    if fstype not in MOUNT_TYPES:
        raise UnknownFilesystemError("no known filesystem (ext2/3/4, vfat, squashfs, erofs, "
                                     "iso9660) in this image, not mounting it", path=image)
    stack = contextlib.ExitStack()
    try:
        with _signals_deferred():
            root = _mount_root(runtime_dir)
            sweep_stale_mounts(runtime_dir)
            own = f"{os.getpid()}-{_start_time(os.getpid())}-"
            point = Path(tempfile.mkdtemp(prefix=own, dir=root))  # mode 0700
            stack.callback(os.rmdir, point)
            loop = stack.enter_context(attached_loop(image))
            shared = _parent_is_shared(point)
            _mount_image(str(loop.path), point, fstype, image)
            stack.callback(_unmount, point, busy_timeout)
            if not shared:
                # Explicitly private: nothing mounted below it later propagates anywhere. When the
                # parent is shared the kernel already copied the mount to the peers; making ours
                # private now would stop our umount from reaching those copies, so leave it be.
                linux.mount(None, point, None, linux.MS_PRIVATE)
        yield point
    finally:
        with _signals_deferred():
            stack.close()
