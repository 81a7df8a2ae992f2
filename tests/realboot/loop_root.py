"""A root filesystem an entry's ``root=`` can name, so that the root check is decided: a real
ext4 on a loop device, mounted, holding ``usr/lib/modules/<release>`` for the given releases.

``root=/dev/loopN`` is resolved by bootwatch.health.root as any ``root=/dev/...`` is (the
device's mount on this host), with no udev links needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from realboot.grub_mkconfig import Unavailable


@contextlib.contextmanager
def loop_root(workdir: Path, releases: tuple[str, ...]) -> Iterator[str]:
    """Yield the loop device of a mounted ext4 with each release's modules directory; always
    unmounted and detached afterwards."""
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("losetup", "mkfs.ext4", "mount")) \
            or not Path("/dev/loop-control").exists():
        raise Unavailable("a loop-mounted root needs root, /dev/loop-control, losetup and mkfs.ext4")
    image, mountpoint = workdir / "root.img", workdir / "root"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                            text=True).stdout.strip()
    try:
        mountpoint.mkdir()
        subprocess.run(["mount", device, str(mountpoint)], check=True, capture_output=True)
        try:
            for release in releases:
                modules = mountpoint / "usr" / "lib" / "modules" / release
                (modules / "kernel").mkdir(parents=True)
                (modules / "modules.dep").write_text("")
            yield device
        finally:
            subprocess.run(["umount", str(mountpoint)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
