"""A container root on real filesystems: ext4 on loop devices, /boot its own or a directory of root.

GRUB's tools need real block devices where the container's overlay root has none: grub-mkconfig
asks ``grub-probe --target=device`` for / and /boot, reads the device it names, and stops on
overlayfs. So the root of these containers is an ext4 filesystem made from the cached Debian tree
(``mkfs.ext4 -d``, no mount needed to fill it), on a loop device; with
:attr:`BootLayout.SEPARATE_BOOT` /boot is a second, empty ext4 on a second loop device.

Both are mounted in nspawn's private mount namespace (``namespace_setup`` of
:func:`nspawn_container.booted_container`), so the host's mount table never sees them, and they
go away with the namespace. They are mounted from block nodes of their own
(``/run/bootwatch-disks/root``, ``.../boot``) in that namespace's private /run, and those nodes
are bound into the container at the same paths, because:

- the container's /proc/self/mountinfo names the mount source, and grub-probe opens that path;
- GRUB's ``10_linux`` writes no entry at all when the root device is called ``/dev/loopN``
  ("We can't cope with devices loop-mounted from files here"; see tests/realboot/README.md);
- the host's /dev stays untouched: nodes made in a private tmpfs, not in /dev.

The loop devices are the only global state; they are detached on every way out.
"""

from __future__ import annotations

import contextlib
import enum
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NODES = "/run/bootwatch-disks"
ROOT_SIZE_MIB = 3072
BOOT_SIZE_MIB = 512
"""Debian's installer makes a separate /boot of about 500 MB."""


class BootLayout(enum.Enum):
    SEPARATE_BOOT = "separate-boot"
    """/boot is its own ext4 filesystem (Debian's "separate /boot partition" recipe)."""
    BOOT_ON_ROOT = "boot-on-root"
    """/boot is a directory of the root filesystem (Debian's default "all files in one partition")."""


@dataclass(frozen=True)
class Disks:
    layout: BootLayout
    mount_point: Path
    """Where the root filesystem is mounted in nspawn's namespace: the container's --directory."""
    root_uuid: str
    boot_uuid: str
    """The filesystem holding /boot: the root filesystem's for BOOT_ON_ROOT."""
    namespace_setup: str
    """Shell for nspawn's private mount namespace: the block nodes, the mounts."""
    nspawn_args: tuple[str, ...]
    """The block nodes bound into the container, at the paths mountinfo names."""
    nodes: dict[str, str]
    """Node path in the container -> filesystem UUID (for /dev/disk/by-uuid links)."""


def _run(argv: list[str], timeout: float = 300) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _mkfs(image: Path, size_mib: int, source: Path | None) -> str:
    fs_uuid = str(uuid.uuid4())
    with image.open("wb") as f:
        f.truncate(size_mib << 20)
    _run(["mkfs.ext4", "-q", "-F", "-U", fs_uuid, *(["-d", str(source)] if source else []), str(image)])
    return fs_uuid


@contextlib.contextmanager
def _loop(image: Path) -> Iterator[str]:
    device = _run(["losetup", "--find", "--show", str(image)]).strip()
    try:
        yield device
    finally:
        # If something still holds it (it should not: the namespace that mounted it is gone),
        # -d makes the kernel detach it when the last user lets go.
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)


@contextlib.contextmanager
def container_disks(rootfs: Path, layout: BootLayout, workdir: Path) -> Iterator[Disks]:
    """Make the filesystems of *layout* with a copy of *rootfs* and attach them to loop devices."""
    workdir.mkdir(parents=True, exist_ok=True)
    mount_point = workdir / "root"
    mount_point.mkdir()
    with contextlib.ExitStack() as stack:
        # Hundreds of MiB each: deleted on the way out (after the loop devices let go of them).
        for image in ("root.img", "boot.img"):
            stack.callback((workdir / image).unlink, missing_ok=True)
        root_uuid = _mkfs(workdir / "root.img", ROOT_SIZE_MIB, rootfs)
        separate = layout is BootLayout.SEPARATE_BOOT
        boot_uuid = _mkfs(workdir / "boot.img", BOOT_SIZE_MIB, None) if separate else root_uuid
        root_loop = stack.enter_context(_loop(workdir / "root.img"))
        boot_loop = stack.enter_context(_loop(workdir / "boot.img")) if separate else None
        mnt = shlex.quote(str(mount_point))
        # cp -a of a block device makes a node with its numbers (mknod), under another name.
        lines = [f"mkdir -p {NODES}",
                 f"cp -a {shlex.quote(root_loop)} {NODES}/root",
                 f"mount -t ext4 {NODES}/root {mnt}"]
        nodes = {f"{NODES}/root": root_uuid}
        if boot_loop is not None:
            lines += [f"cp -a {shlex.quote(boot_loop)} {NODES}/boot",
                      f"mkdir -p {mnt}/boot",
                      f"mount -t ext4 {NODES}/boot {mnt}/boot"]
            nodes[f"{NODES}/boot"] = boot_uuid
        yield Disks(layout=layout, mount_point=mount_point, root_uuid=root_uuid, boot_uuid=boot_uuid,
                    namespace_setup="\n".join(lines),
                    nspawn_args=tuple(f"--bind={node}" for node in nodes), nodes=nodes)
