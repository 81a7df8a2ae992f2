"""BLS type #1 entries written by the real ``kernel-install add`` (Debian 12's systemd) with ``layout=bls``.

See README.md beside this file. The kernels are the cached real Debian packages of
:mod:`realboot.grub_mkconfig` (reused, with its loop-device helpers); each goes into /boot as
Debian's package puts it (``vmlinuz-V``) with an ``initrd.img-V``, which kernel-install's
``85-initrd.install`` picks up, and ``90-loaderentry.install`` writes the entry.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from realboot.grub_mkconfig import Kernel, _filesystem, _loop
from realboot.uki_build import initramfs_for

SCRIPT = Path(__file__).with_name("kernel-install-chroot.sh")
REQUIRED_TOOLS = ("kernel-install", "unshare", "losetup", "mkfs.ext4", "blkid", "chroot", "tar")


class BlsLayout(enum.Enum):
    SEPARATE_BOOT = "separate-boot"
    """/boot is its own ext4 filesystem and $BOOT: entries at its root, paths from its root."""
    BOOT_ON_ROOT = "boot-on-root"
    """/boot is a directory of the root filesystem: paths carry /boot/."""
    ESP = "esp"
    """$BOOT is an ESP mounted at /efi (an ext4 filesystem: kernel-install never asks the type, and
    the kernels these tests run on may have no vfat driver)."""


@dataclass(frozen=True)
class InstalledBls:
    layout: BlsLayout
    machine_id: str
    kernels: tuple[Kernel, ...]
    trees: dict[str, Path]
    """Copies of the filesystems after kernel-install ran: "root", and "boot" or "esp"."""
    files: dict[str, frozenset[str]]
    """For each filesystem ("root", "boot", "esp"), its regular files as paths from its root."""
    output: str

    @property
    def entries_dir(self) -> Path:
        if self.layout is BlsLayout.SEPARATE_BOOT:
            return self.trees["boot"] / "loader" / "entries"
        if self.layout is BlsLayout.ESP:
            return self.trees["esp"] / "loader" / "entries"
        return self.trees["root"] / "boot" / "loader" / "entries"


def missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices, mounts, chroot)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install -y systemd dosfstools e2fsprogs)"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control"
    return None


def run_kernel_install(layout: BlsLayout, kernels: tuple[Kernel, ...], workdir: Path, *,
                       tries: int | None = None, steps: Path | None = None,
                       environment: Mapping[str, str] | None = None) -> InstalledBls:
    """Run the real ``kernel-install add`` for each kernel, in order, and return what it wrote.

    ``steps``: a script that the chroot script sources instead (its STEPS), with ``environment``
    added to the chroot script's."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "out"
    out.mkdir()
    payload = workdir / "payload"
    payload.mkdir()
    for kernel in kernels:
        shutil.copyfile(kernel.boot / f"vmlinuz-{kernel.version}", payload / f"vmlinuz-{kernel.version}")
        initramfs_for(kernel, payload)
    for tree in payload.glob("initramfs-tree-*"):
        shutil.rmtree(tree)
    machine_id = uuid.uuid4().hex
    # The root filesystem holds /boot in BOOT_ON_ROOT, and the cache (/var/lib/bootwatch) in every layout.
    _filesystem(workdir / "root.img", 192)
    if layout is BlsLayout.SEPARATE_BOOT:
        _filesystem(workdir / "boot.img", 96)
    if layout is BlsLayout.ESP:
        _filesystem(workdir / "esp.img", 96)
    (workdir / "mnt").mkdir()
    with contextlib.ExitStack() as stack:
        loops = {name: stack.enter_context(_loop(workdir / f"{name}.img")) if (workdir / f"{name}.img").exists()
                 else "" for name in ("root", "boot", "esp")}
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "ROOT_LOOP": loops["root"],
               "BOOT_LOOP": loops["boot"], "ESP_LOOP": loops["esp"],
               "BOOT_ROOT": "/efi" if layout is BlsLayout.ESP else "/boot", "MNT": str(workdir / "mnt"),
               "PAYLOAD": str(payload), "VERSIONS": " ".join(k.version for k in kernels),
               "MACHINE_ID": machine_id, "OUT": str(out)}
        if tries is not None:
            env["TRIES"] = str(tries)
        if steps is not None:
            env["STEPS"] = str(steps)
        env.update(environment or {})
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", str(SCRIPT)], env=env,
                              capture_output=True, text=True, timeout=600, check=False)
    for image in workdir.glob("*.img"):
        image.unlink()
    shutil.rmtree(payload)
    if proc.returncode != 0:
        raise RuntimeError(f"kernel-install in {workdir} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    trees = {name: out / name for name in ("root", "boot", "esp") if (out / name).is_dir()}
    files = {p.name[len("files-"):-len(".txt")]: frozenset(p.read_text().splitlines())
             for p in out.glob("files-*.txt")}
    return InstalledBls(layout, machine_id, kernels, trees, files, proc.stdout + proc.stderr)
