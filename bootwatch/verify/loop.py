"""Attach an image to a read-only loop device through the kernel's own ioctls.

This module never runs ``losetup``. It talks to ``/dev/loop-control`` and to the ``/dev/loopN``
nodes directly, the way util-linux does, because the shell tool cannot give the guarantees below:

* **A free device without races.** ``LOOP_CTL_GET_FREE`` only *names* an unbound device; it does not
  reserve it. Another process (another verifier, ``losetup``, systemd-nspawn...) may bind the same
  device before we do. ``LOOP_CONFIGURE`` on a bound device fails with ``EBUSY``, so we simply ask
  again for a new free device, a bounded number of times.
* **udev keeps out.** We hold an exclusive ``flock(2)`` on the device node for as long as it is
  attached. systemd-udevd takes a shared, non-blocking lock before it probes a block device and
  skips devices that are locked (https://systemd.io/BLOCK_DEVICE_LOCKING), so it neither probes nor
  runs rules on our half-configured device. The lock also tells a second bootwatch verifier that
  the device is in use between ``LOOP_CTL_GET_FREE`` and ``LOOP_CONFIGURE``.
* **The node is the device we asked for.** ``/dev/loopN`` is opened relative to ``/dev`` and
  ``fstat``-ed: it must be a block device whose ``st_rdev`` is the one sysfs gives for ``loopN``.
* **Nothing stays behind.** The device is configured with ``LO_FLAGS_AUTOCLEAR``: the kernel unbinds
  it when the last opener goes away, even if this process is killed with SIGKILL. We also clear it
  explicitly on the way out, and every failure path after a successful bind clears it again.

``LOOP_CONFIGURE`` (Linux >= 5.8) binds the file and sets offset, size limit and flags in one
atomic call. Older kernels answer ``EINVAL``; there we fall back to ``LOOP_SET_FD`` followed by
``LOOP_SET_STATUS64``. ``LOOP_SET_FD`` makes the device read-only on its own because the backing
file is opened ``O_RDONLY``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from bootwatch.errors import BootwatchError

__all__ = [
    "LoopDevice",
    "LoopUnavailableError",
    "attached_loop",
    "loop_available",
]

LOOP_MAJOR = 7
LO_NAME_SIZE = 64
LO_KEY_SIZE = 32

# Flags of struct loop_info64.lo_flags (linux/loop.h).
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_PARTSCAN = 8
LO_FLAGS_DIRECT_IO = 16

# ioctl numbers (linux/loop.h): plain numbers, not _IOW() encodings.
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82

LOOP_CONTROL = Path("/dev/loop-control")

# How often to ask for another free device when someone else takes ours first.
ATTACH_ATTEMPTS = 64


class LoopUnavailableError(BootwatchError):
    """Loop devices cannot be used here: not root, or no loop driver / ``/dev/loop-control``."""


class LoopInfo64(ctypes.Structure):
    """``struct loop_info64`` from ``linux/loop.h``."""

    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_uint8 * LO_NAME_SIZE),
        ("lo_crypt_name", ctypes.c_uint8 * LO_NAME_SIZE),
        ("lo_encrypt_key", ctypes.c_uint8 * LO_KEY_SIZE),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class LoopConfig(ctypes.Structure):
    """``struct loop_config`` from ``linux/loop.h``, the argument of ``LOOP_CONFIGURE``."""

    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


class LoopDevice:
    """An attached loop device: its node, its minor, and the locked fd that keeps it alive."""

    def __init__(self, path: Path, minor: int, fd: int) -> None:
        self.path = path
        self.minor = minor
        self.fd = fd

    def __repr__(self) -> str:
        return f"LoopDevice({str(self.path)!r})"

    def status(self) -> LoopInfo64:
        """``LOOP_GET_STATUS64``: raises ``OSError(ENXIO)`` when the device is not bound."""
        info = LoopInfo64()
        fcntl.ioctl(self.fd, LOOP_GET_STATUS64, info)
        return info


def loop_available() -> str | None:
    """None when loop devices can be attached here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root to attach loop devices"
    if not LOOP_CONTROL.exists():
        return f"{LOOP_CONTROL} does not exist (no loop driver)"
    return None


def _expected_rdev(minor: int) -> int | None:
    """The device number sysfs gives for loopN ("7:N"), or None when sysfs does not know it.

    With ``max_part`` > 0 the loop driver spaces minors out (loopN is ``N << part_shift``), so the
    minor is not always N: sysfs is the authority.
    """
    try:
        text = Path(f"/sys/block/loop{minor}/dev").read_text(encoding="ascii").strip()
    except OSError:
        return None
    major_text, _, minor_text = text.partition(":")
    return os.makedev(int(major_text), int(minor_text))


def _open_node(dev_dir_fd: int, minor: int) -> int:
    """Open ``loopN`` relative to /dev and check that it really is that loop device."""
    name = f"loop{minor}"
    fd = -1
    # A freshly created device may not have its node yet when udev (not devtmpfs) makes nodes.
    for _ in range(50):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dev_dir_fd)
            break
        except FileNotFoundError:
            time.sleep(0.01)
    if fd < 0:
        raise BootwatchError("the device node does not appear", path=f"/dev/{name}")
    try:
        st = os.fstat(fd)
        expected = _expected_rdev(minor)
        if expected is None:
            ok = os.major(st.st_rdev) == LOOP_MAJOR and os.minor(st.st_rdev) == minor
        else:
            ok = st.st_rdev == expected
        if not stat.S_ISBLK(st.st_mode) or not ok:
            raise BootwatchError(
                f"not the loop device it names (mode {st.st_mode:o}, device "
                f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)})", path=f"/dev/{name}",
                hint="something replaced the device node; check /dev")
    except BaseException:
        os.close(fd)
        raise
    return fd


def loop_info(offset: int, sizelimit: int) -> LoopInfo64:
    """The status of a device bound read-only with autoclear at ``offset``, ``sizelimit`` bytes."""
    info = LoopInfo64()
    info.lo_offset = offset
    info.lo_sizelimit = sizelimit
    # No LO_FLAGS_DIRECT_IO: page-cache I/O is what a plain read-only check wants, and direct I/O
    # fails on backing files whose filesystem has larger logical blocks than ours.
    info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR
    return info


def _bind(dev_fd: int, backing_fd: int, offset: int, sizelimit: int) -> None:
    """Bind ``backing_fd`` read-only with autoclear; LOOP_CONFIGURE first, legacy on EINVAL."""
    info = loop_info(offset, sizelimit)
    config = LoopConfig()
    config.fd = backing_fd
    config.block_size = 0  # keep the default 512-byte logical blocks
    config.info = info
    try:
        fcntl.ioctl(dev_fd, LOOP_CONFIGURE, config)
        return
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
    bind_legacy(dev_fd, backing_fd, info)


def bind_legacy(dev_fd: int, backing_fd: int, info: LoopInfo64) -> None:
    """Bind the way kernels before 5.8 (no ``LOOP_CONFIGURE``) can: ``LOOP_SET_FD``, then
    ``LOOP_SET_STATUS64``; the device is cleared again if the second fails."""
    fcntl.ioctl(dev_fd, LOOP_SET_FD, backing_fd)
    try:
        # LOOP_SET_STATUS64 ignores READ_ONLY (the device is already read-only because the backing
        # fd is), but takes offset, sizelimit and AUTOCLEAR.
        fcntl.ioctl(dev_fd, LOOP_SET_STATUS64, info)
    except BaseException:
        _clear(dev_fd)
        raise


def _clear(dev_fd: int) -> None:
    """``LOOP_CLR_FD``; ENXIO means nothing is bound any more, which is the goal."""
    try:
        fcntl.ioctl(dev_fd, LOOP_CLR_FD)
    except OSError as err:
        # EBUSY cannot happen for autoclear devices on current kernels (they only mark the device
        # for clearing), ENXIO means it is already unbound.
        if err.errno not in (errno.ENXIO, errno.EBUSY):
            raise


def _is_bound_to(dev_fd: int, st: os.stat_result) -> bool:
    info = LoopInfo64()
    try:
        fcntl.ioctl(dev_fd, LOOP_GET_STATUS64, info)
    except OSError as err:
        if err.errno == errno.ENXIO:
            return False
        raise
    return bool(info.lo_device == st.st_dev and info.lo_inode == st.st_ino)


@contextlib.contextmanager
def attached_loop(image: Path, *, offset: int = 0, sizelimit: int = 0) -> Iterator[LoopDevice]:
    """Attach ``image`` to a free loop device, read-only, and detach it on every way out.

    ``offset`` and ``sizelimit`` are in bytes (0 = up to the end of the file).

    While the context is open the device node is held open and exclusively ``flock``-ed. On the
    way out the device is cleared; if something still holds it (a lazily detached mount, a
    process with the device open), autoclear makes the kernel unbind it when that user goes.
    """
    reason = loop_available()
    if reason is not None:
        raise LoopUnavailableError(reason, path=image)
    with contextlib.ExitStack() as stack:
        try:
            backing_fd = os.open(image, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as err:
            raise BootwatchError(f"cannot open for a loop device: {os.strerror(err.errno or 0)}",
                                 path=image) from err
        stack.callback(os.close, backing_fd)
        backing_st = os.fstat(backing_fd)
        if not stat.S_ISREG(backing_st.st_mode):
            raise BootwatchError("not a regular file, will not attach it", path=image)
        ctl_fd = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        stack.callback(os.close, ctl_fd)
        dev_dir_fd = os.open("/dev", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        stack.callback(os.close, dev_dir_fd)

        device = _attach(ctl_fd, dev_dir_fd, backing_fd, backing_st, offset, sizelimit, image)
        # From here on the device is bound: close the control fds now, keep the device fd.
        stack.close()
        try:
            yield device
        finally:
            _release(device)


def _attach(ctl_fd: int, dev_dir_fd: int, backing_fd: int, backing_st: os.stat_result,
            offset: int, sizelimit: int, image: Path) -> LoopDevice:
    last_error: OSError | None = None
    for attempt in range(ATTACH_ATTEMPTS):
        minor = fcntl.ioctl(ctl_fd, LOOP_CTL_GET_FREE)
        try:
            dev_fd = _open_node(dev_dir_fd, minor)
        except OSError as err:
            # lo_open() answers ENXIO while another process's device is being torn down (or
            # removed): it is not free after all, ask again.
            if err.errno != errno.ENXIO:
                raise
            last_error = err
            time.sleep(0.001 * (attempt + 1))
            continue
        bound = False
        try:
            try:
                fcntl.flock(dev_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                # Another verifier locked it and is about to bind it: pick again after it has.
                last_error = err
                os.close(dev_fd)
                time.sleep(0.001 * (attempt + 1))
                continue
            try:
                _bind(dev_fd, backing_fd, offset, sizelimit)
            except OSError as err:
                if err.errno != errno.EBUSY:
                    raise
                # Someone without a lock (losetup, another tool) bound it first: pick again.
                last_error = err
                os.close(dev_fd)
                continue
            bound = True
            # Belt and braces: the device must now be backed by *our* file.
            if not _is_bound_to(dev_fd, backing_st):
                raise BootwatchError(f"loop{minor} is not backed by the image after binding it",
                                     path=image)
            return LoopDevice(Path(f"/dev/loop{minor}"), minor, dev_fd)
        except BaseException:
            if bound:
                _clear(dev_fd)
            with contextlib.suppress(OSError):
                os.close(dev_fd)
            raise
    raise BootwatchError(f"no free loop device after {ATTACH_ATTEMPTS} attempts "
                         f"({last_error.strerror if last_error else 'busy'})", path=image,
                         hint="other processes keep taking the free loop devices")


def _release(device: LoopDevice) -> None:
    """Clear the device and drop our fd (and with it the lock)."""
    try:
        _clear(device.fd)
    finally:
        # Closing the last opener of an autoclear device unbinds it synchronously in lo_release().
        os.close(device.fd)
        device.fd = -1
