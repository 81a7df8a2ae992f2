"""Review of issue 13 (the entry inventory in the cache), as an attacker: each test is a defect
found on main, marked xfail(strict=True) until it is fixed. Real files, real tmpfs mounts and
unmounts, the real command line as a child process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts tmpfs: needs root")


@contextlib.contextmanager
def tmpfs(where: Path) -> Iterator[None]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-q", str(where)], check=False)


def umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], check=True)


def ok(result: tuple[int, str, str]) -> str:
    rc, out, err = result
    assert "Traceback" not in err, err
    assert rc == 0, out + err
    return out


GRUB_CFG_CHAIN = """\
menuentry 'Debian 1' {
\tlinux /vmlinuz-1 root=/dev/sda1 ro
\tinitrd /initrd.img-1
}
menuentry 'Debian 2' {
\tlinux /vmlinuz-2 root=/dev/sda1 ro
\tinitrd /initrd.img-2
}
menuentry 'shim' {
\tchainloader /EFI/debian/grubx64.efi
}
"""


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="clean --force while the ESP is not mounted records the bare mount point "
                   "as the ESP (references.References.confirmed() drops `absent`, observe() records the "
                   "underlying filesystem as esp_mount): later restores write ESP files onto the filesystem "
                   "under the mount point, and once the real ESP is mounted again its files are never restored "
                   "(judge(): 'the ESP is not the mount it was', absent)")
def test_clean_force_with_the_esp_unmounted_never_makes_the_mount_point_the_esp(boot_tree) -> None:
    tree = boot_tree
    esp = tree.boot / "efi"
    esp.mkdir()
    tree.config.write_text(f'[entries]\nesp = "{esp}"\n')
    (tree.boot / "grub").mkdir()
    (tree.boot / "grub" / "grub.cfg").write_text(GRUB_CFG_CHAIN)
    for v in ("1", "2"):
        tree.write_file(f"/vmlinuz-{v}")
        tree.write_file(f"/initrd.img-{v}")
    shim = esp / "EFI" / "debian" / "grubx64.efi"
    with tmpfs(esp):
        shim.parent.mkdir(parents=True)
        shim.write_bytes(os.urandom(4096))
        ok(tree.cli("scan"))
        assert tree.list_json()["/efi/EFI/debian/grubx64.efi"]["state"] == "CACHED"
        umount(esp)
        # The operator follows the hint of the refused clean ("if that is how it should be,
        # 'bootwatch clean --force' confirms it") while the ESP happens to be unmounted.
        tree.cli("clean", "--force")
        # Something writes the ESP's directory into the bare mount point (grub-install or
        # kernel-install run while the ESP is not mounted).
        shim.parent.mkdir(parents=True)
        tree.cli("scan")
        written_under_mount_point = shim.exists()
        # The real ESP comes back; its boot loader is deleted: the entry still names it.
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(esp)], check=True)
        shim.parent.mkdir(parents=True)
        tree.cli("scan")
        restored_on_the_esp = shim.exists()
    assert not written_under_mount_point, "a restore wrote an ESP file onto the filesystem under the ESP's mount point"
    assert restored_on_the_esp, "the ESP's boot loader, named by an entry, was not restored once the ESP was back"
