"""Slow media for tests: a loop-mounted ext4 whose reads a blkio cgroup throttles.

A process in the cgroup reads the loop device at ``bytes_per_second`` (the kernel's own I/O
throttling, as a slow USB stick or a busy disk would), so a copy of a few tens of MiB takes
seconds, and a test can act in the middle of it without timing guesses. The page cache is
dropped by remounting, so reads do reach the device.

Needs root, loop devices and a cgroup controller that throttles reads: v1 ``blkio``
(``blkio.throttle.read_bps_device``) or v2 ``io`` (``io.max rbps=``); the tests skip without them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

BLKIO = Path("/sys/fs/cgroup/blkio")


class LoopFs:
    def __init__(self, image: Path, mountpoint: Path, device: str) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.device = device

    @property
    def majmin(self) -> str:
        st = os.stat(self.device)
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"

    def remount(self) -> None:
        """Unmount and mount again: nothing of its files is left in the page cache."""
        subprocess.run(["umount", str(self.mountpoint)], check=True)
        subprocess.run(["mount", self.device, str(self.mountpoint)], check=True)


@contextlib.contextmanager
def loop_ext4(image: Path, mountpoint: Path, size_mib: int) -> Iterator[LoopFs]:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop mounts")
    with open(image, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    device = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True,
                            text=True).stdout.strip()
    try:
        mountpoint.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", device, str(mountpoint)], check=True)
        try:
            yield LoopFs(image, mountpoint, device)
        finally:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


class ThrottledReads:
    """A blkio cgroup: processes moved into it read ``majmin`` at ``bytes_per_second``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, pid: int) -> None:
        (self.directory / "cgroup.procs").write_text(f"{pid}\n")

    def pids(self) -> list[int]:
        return [int(p) for p in (self.directory / "cgroup.procs").read_text().split()]


def _cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted, if its ``io`` controller can be used from the root."""
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    roots = [Path(fields[4]) for fields in mounts if fields[fields.index("-") + 1] == "cgroup2"]
    for root in roots:
        try:
            if "io" not in (root / "cgroup.controllers").read_text().split():
                continue
            if "io" not in (root / "cgroup.subtree_control").read_text().split():
                (root / "cgroup.subtree_control").write_text("+io\n")
            return root
        except OSError:
            continue
    return None


def _throttle_files(majmin: str, bytes_per_second: int) -> tuple[Path, str, str] | None:
    """(hierarchy root, limit file, its line) of the first controller that throttles reads."""
    if (BLKIO / "blkio.throttle.read_bps_device").exists():
        return BLKIO, "blkio.throttle.read_bps_device", f"{majmin} {bytes_per_second}\n"
    root = _cgroup2_root()
    if root is not None:
        return root, "io.max", f"{majmin} rbps={bytes_per_second}\n"
    return None


@contextlib.contextmanager
def throttled_reads(majmin: str, bytes_per_second: int) -> Iterator[ThrottledReads]:
    found = _throttle_files(majmin, bytes_per_second)
    if found is None:
        pytest.skip("no cgroup controller that throttles reads (v1 blkio or v2 io)")
    root, limit_file, line = found
    directory = root / f"bootwatch-test-{os.getpid()}-{majmin.replace(':', '-')}"
    directory.mkdir()
    try:
        try:
            (directory / limit_file).write_text(line)
        except OSError as e:
            pytest.skip(f"cannot throttle reads of {majmin} in {directory}: {e}")
        yield ThrottledReads(directory)
    finally:
        for pid in ThrottledReads(directory).pids():  # survivors go back to the root group
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(f"{pid}\n")
        directory.rmdir()
