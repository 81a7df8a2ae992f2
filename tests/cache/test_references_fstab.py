"""A boot directory or ESP that /etc/fstab lists as a mount point, and that is not mounted, is
an unmounted partition's mount point: no read of it is decided on, and none starts the history
(see README, "Unknown references"). Each CLI run gets its own /etc/fstab in a mount namespace of
its own (unshare), bind-mounted over the host's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bootwatch.cache import fstab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts: needs root")

GRUB_CFG = "menuentry 'Debian 9' {\n\tlinux /vmlinuz-9 ro\n}\n"


def test_fstab_mount_points_are_parsed_as_fstab_5_says() -> None:
    text = ("# /etc/fstab: static file system information.\n"
            "  # an indented comment /not\n"
            "\n"
            "UUID=1234 /          ext4 errors=remount-ro 0 1\n"
            "UUID=5678 /boot      ext4 defaults,noauto   0 2\n"
            "LABEL=ESP /boot/efi/ vfat umask=0077        0 1\n"
            "/dev/sdb1 /mnt/my\\040disk ext4 defaults 0 0\n"
            "/swapfile none swap sw 0 0\n"
            "/dev/sdc1 swap swap sw 0 0\n"
            "/dev/sdd1 /srv/swap-like swap sw 0 0\n"
            "proc\n")
    assert fstab.parse(text) == {"/", "/boot", "/boot/efi", "/mnt/my disk"}


def _stale_mount_point(tree) -> Path:
    """A boot directory that is the mount point of an unmounted /boot: a stale grub.cfg and the
    kernel it names, as the distribution's installer left them under it."""
    shutil.rmtree(tree.entries.parent)
    (tree.boot / "grub").mkdir()
    (tree.boot / "grub" / "grub.cfg").write_text(GRUB_CFG)
    tree.write_file("/vmlinuz-9")
    table = tree.root / "fstab"
    boot = str(tree.boot).replace(" ", "\\040")
    table.write_text(f"# <file system> <mount point> <type> <options> <dump> <pass>\n"
                     f"UUID=1234 / ext4 defaults 0 1\nUUID=5678 {boot} ext4 defaults,noauto 0 2\n"
                     "/swapfile none swap sw 0 0\n")
    return table


def test_an_unmounted_fstab_boot_directory_starts_no_history(boot_tree) -> None:
    tree = boot_tree
    table = _stale_mount_point(tree)
    record = tree.cache / ".bootwatch-references"
    rc, out, err = tree.cli_with_fstab(table, "scan")
    assert "Traceback" not in err and not record.exists(), out + err
    rc, out, err = tree.cli_with_fstab(table, "clean", "--force")
    line = tree.assert_clean_error(rc, err, names=[str(tree.boot)])
    assert "/etc/fstab" in line and "mount it" in line, line
    assert not record.exists(), "clean --force confirmed an unmounted partition's mount point"

    # The boot partition mounted there: the read is of it, and starts the history.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(tree.boot)], check=True)
    try:
        (tree.boot / "grub").mkdir()
        (tree.boot / "grub" / "grub.cfg").write_text(GRUB_CFG.replace("9", "1"))
        tree.write_file("/vmlinuz-1")
        rc, out, err = tree.cli_with_fstab(table, "scan")
        assert rc == 0 and "Traceback" not in err, out + err
        assert record.exists(), "the read of the mounted boot partition did not start the history"
    finally:
        subprocess.run(["umount", "-q", str(tree.boot)], check=False)


def test_an_fstab_that_cannot_be_read_is_ignored(boot_tree) -> None:
    tree = boot_tree
    _stale_mount_point(tree)
    fifo = tree.root / "fstab-fifo"
    os.mkfifo(fifo)  # a plain open would wait for a writer
    rc, out, err = tree.cli_with_fstab(fifo, "scan")
    assert rc == 0 and "Traceback" not in err, out + err
    assert (tree.cache / ".bootwatch-references").exists()
