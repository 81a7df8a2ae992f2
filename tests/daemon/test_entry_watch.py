"""The daemon sees every entry source change as an entry change, by inotify alone.

The periodic rescan is set to an hour, so only the watches can make the daemon act. The daemon,
the renames and the mounts are real: ostree's ``loader -> loader.N`` swap is a real rename of a
new symlink over ``/boot/loader``; the ESP is a real tmpfs mounted outside the boot directory,
and really unmounted and mounted again.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
from daemonproc import DaemonProcess, write_config
from polling import wait_for

pytestmark = pytest.mark.slow

K1, K2 = "/vmlinuz-1.0", "/vmlinuz-2.0"


def config(tree, **sections: dict[str, object]) -> Path:
    return write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                        watch={"settle": "100ms", "rescan_interval": "1h"}, **sections)


def test_an_ostree_swap_of_the_loader_symlink_is_an_entry_change(boot_tree) -> None:
    """ostree writes /boot/loader.1/entries and renames a new symlink loader -> loader.1 over
    /boot/loader. The daemon reads the new entries at the swap, and keeps watching them after it.
    The new deployment's directory is written before the daemon starts, so that the rename of the
    symlink is the only change it sees (a new directory alone would make it read everything)."""
    tree = boot_tree
    boot = tree.boot
    os.rename(boot / "loader", boot / "loader.0")
    (boot / "loader").symlink_to("loader.0")
    tree.write_kernel("1.0")
    tree.write_kernel("2.0")
    tree.write_entry("ostree-1", linux=K1)
    tree.write_entry("ostree-2", linux=K2)
    assert tree.cli("scan")[0] == 0
    # The new deployment names only K1: at the swap, K2's restored copy is no one's any more.
    (boot / "loader.1" / "entries").mkdir(parents=True)
    (boot / "loader.1" / "entries" / "ostree-1.conf").write_text(f"title ostree 1\nlinux {K1}\n")
    with DaemonProcess(config(tree), tree.root) as daemon:
        daemon.wait_ready()
        tree.path(K2).unlink()
        wait_for(lambda: tree.path(K2).is_file(), what="the restore of a referenced kernel")
        (boot / "loader.tmp").symlink_to("loader.1")
        os.rename(boot / "loader.tmp", boot / "loader")  # rename(2) of a symlink over a symlink
        wait_for(lambda: not tree.path(K2).exists(), what="the restored copy taken away at the swap")
        # The entries behind the new symlink are watched: an entry naming K2 again restores it.
        (boot / "loader" / "entries" / "ostree-2.conf").write_text(f"title ostree 2\nlinux {K2}\n")
        wait_for(lambda: tree.path(K2).is_file(), what="the restore for an entry written after the swap")
        output = daemon.output()
    assert "Traceback" not in output, output


def test_a_rewritten_grub_cfg_is_an_entry_change(boot_tree) -> None:
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_kernel("2.0")
    grub = tree.boot / "grub"
    grub.mkdir()
    entry = "menuentry 'Debian {v}' {{\n\tlinux /vmlinuz-{v} root=/dev/vda1\n}}\n"
    (grub / "grub.cfg").write_text(entry.format(v="1.0") + entry.format(v="2.0"))
    assert tree.cli("scan")[0] == 0
    with DaemonProcess(config(tree), tree.root) as daemon:
        daemon.wait_ready()
        tree.path(K2).unlink()
        wait_for(lambda: tree.path(K2).is_file(), what="the restore of a kernel grub.cfg names")
        # update-grub writes grub.cfg.new and renames it over grub.cfg.
        (grub / "grub.cfg.new").write_text(entry.format(v="1.0"))
        os.rename(grub / "grub.cfg.new", grub / "grub.cfg")
        wait_for(lambda: not tree.path(K2).exists(), what="the restored copy taken away after update-grub")
        output = daemon.output()
    assert "Traceback" not in output, output


def mount_tmpfs(where: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], check=True, capture_output=True)


def test_the_esp_is_watched_while_mounted_and_again_after_a_remount(boot_tree, needs_root) -> None:
    """Entries on an ESP outside the boot directory are watched; the ESP unmounted (as an
    automount expires) is not held by the daemon (umount succeeds: no open file, no cwd there),
    and once mounted again its entries are watched again."""
    tree = boot_tree
    esp = tree.root / "efi"
    esp.mkdir()
    mount_tmpfs(esp)
    try:
        (esp / "loader" / "entries").mkdir(parents=True)
        (esp / "arch").mkdir()
        (esp / "arch" / "linux").write_bytes(os.urandom(3000))
        (esp / "loader" / "entries" / "arch.conf").write_text("title arch\nlinux /arch/linux\n")
        key = "/" + os.path.relpath(esp / "arch" / "linux", tree.boot)
        tree.config.write_text(f'[entries]\nesp = "{esp}"\n')
        assert tree.cli("scan")[0] == 0 and key in tree.list_json()
        with DaemonProcess(config(tree, entries={"esp": str(esp)}), tree.root) as daemon:
            daemon.wait_ready()
            (esp / "arch" / "linux").unlink()
            wait_for(lambda: (esp / "arch" / "linux").is_file(), what="the restore on the ESP")
            # The entry removed: the restored copy goes (an event in the ESP's loader/entries).
            (esp / "loader" / "entries" / "arch.conf").unlink()
            wait_for(lambda: not (esp / "arch" / "linux").exists(), what="the restored copy taken away")
            # Unmount: the daemon holds nothing there (no open file, no cwd: a batch that is still
            # finishing may hold a directory for a moment, as an automount's expiry would retry).
            wait_for(lambda: subprocess.run(["umount", str(esp)], capture_output=True).returncode == 0,
                     timeout=10, what="the ESP unmounted")
            mount_tmpfs(esp)  # another, empty ESP: its entries directory appears later
            (esp / "loader" / "entries").mkdir(parents=True)
            (esp / "arch").mkdir()
            (esp / "arch" / "linux").write_bytes(os.urandom(3000))
            wait_for(lambda: "ESP's mount changed" in daemon.output(), what="the ESP watched again")
            (esp / "loader" / "entries" / "arch.conf").write_text("title arch\nlinux /arch/linux\n")
            wait_for(lambda: key in tree.list_json() and tree.list_json()[key]["count"] == 1,
                     what="the entry on the new ESP read by its watch")
            output = daemon.output()
        assert "Traceback" not in output, output
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", str(esp)], check=True, capture_output=True)
