"""Companions a boot needs (bootwatch/health/companions.py), through the health check of real entries.

The entries are real BLS type #1 files naming Debian's cloud kernel and the initramfs Debian's
mkinitramfs makes for it. FIPS: with ``fips=1`` the kernel's HMAC file
``/boot/.vmlinuz-<release>.hmac`` must be there when the initramfs runs dracut's fips module
(a busybox image holding that module's real files, from Debian's ``dracut-core``), and need not
be when it runs none (Debian's mkinitramfs image); the file the tests write is what
``sha512hmac`` (libkcapi's hmaccalc mode) writes for the kernel. Devicetrees:
QEMU's own flattened devicetrees (``/usr/share/qemu/*.dtb``, package qemu-system-data).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from realboot.grub_mkconfig import Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import DRACUT_FIPS, busybox_initramfs, dracut_fips_files, mkinitramfs_image

from bootwatch.entries.model import BootFile, Entry, EntrySource, FileRole, Partition, PartitionKind
from bootwatch.health.companions import fips_mode, hmac_candidates
from bootwatch.health.facts import FactsMemo, fips_check_name
from bootwatch.health.judge import check_host
from bootwatch.health.model import Check, EntryHealth, EntryState

pytestmark = pytest.mark.slow  # the first run builds the initramfs image (cached afterwards)

BootTree = Any  # conftest.BootTree
QEMU_DTBS = Path("/usr/share/qemu")
HMACCALC_KEY = b"FIPS-FTW-RHT2009"  # the key libkcapi's sha512hmac uses (hmaccalc compatible)


@pytest.fixture(scope="module")
def pair() -> tuple[str, Path, Path]:
    """A real kernel's release, its image and its mkinitramfs image."""
    try:
        deb = kernel_debs(1)[0]
        kernel = extracted_kernel(deb)
        return kernel.version, kernel.boot / f"vmlinuz-{kernel.version}", mkinitramfs_image(deb)
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def dracut_fips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox initramfs holding dracut's fips module, as dracut installs it."""
    try:
        return busybox_initramfs(tmp_path_factory.mktemp("dracut") / "initrd.img", "#!/bin/sh\n",
                                 dracut_fips_files())
    except Unavailable as e:
        pytest.skip(str(e))


def install(tree: BootTree, pair: tuple[str, Path, Path], name: str, options: str,
            devicetree: str | None = None, initrd: Path | None = None) -> Path:
    release, vmlinuz, initrd = pair[0], pair[1], initrd or pair[2]
    kernel = tree.boot / f"vmlinuz-{release}"
    shutil.copyfile(vmlinuz, kernel)
    shutil.copyfile(initrd, tree.boot / f"initrd.img-{release}")
    tree.write_entry(name, linux=f"/vmlinuz-{release}", initrd=[f"/initrd.img-{release}"], devicetree=devicetree,
                     lines=[("options", options)])
    return kernel


def write_hmac(kernel: Path) -> Path:
    """``.<kernel>.hmac`` as ``sha512hmac /boot/vmlinuz-X > /boot/.vmlinuz-X.hmac`` writes it."""
    digest = hmac.new(HMACCALC_KEY, kernel.read_bytes(), hashlib.sha512).hexdigest()
    path = kernel.parent / f".{kernel.name}.hmac"
    path.write_text(f"{digest}  /boot/{kernel.name}\n")
    return path


def health(tree: BootTree) -> dict[str, EntryHealth]:
    cache = tree.library()
    return {h.entry.id: h for h in check_host(cache, cache.read_inventory(), FactsMemo(tree.root / "run")).all()}


def companions(h: EntryHealth) -> list[tuple[EntryState, str]]:
    return [(f.state, f.message) for f in h.findings if f.check is Check.COMPANION]


def test_a_fips_entry_without_its_hmac_is_broken_and_with_it_is_not(boot_tree: BootTree,
                                                                    pair: tuple[str, Path, Path],
                                                                    dracut_fips: Path) -> None:
    tree = boot_tree
    kernel = install(tree, pair, "fips", "root=/dev/vda1 ro fips=1 boot=/dev/vda2", initrd=dracut_fips)
    hmac_file = kernel.parent / f".{kernel.name}.hmac"
    verdict = health(tree)["fips.conf"]
    [(state, message)] = companions(verdict)
    assert state is EntryState.BROKEN and verdict.state is EntryState.BROKEN
    assert message.startswith(f"{hmac_file}: missing") and "fips=1" in message, message

    write_hmac(kernel)
    verdict = health(tree)["fips.conf"]
    assert companions(verdict) == []
    assert verdict.state is not EntryState.BROKEN, verdict.findings


@pytest.mark.parametrize("damage", ["empty", "no digest", "directory", "fifo"])
def test_an_hmac_that_is_no_hmac_file_is_broken(boot_tree: BootTree, pair: tuple[str, Path, Path],
                                                damage: str, dracut_fips: Path) -> None:
    tree = boot_tree
    kernel = install(tree, pair, "fips", "ro fips=1", initrd=dracut_fips)
    hmac_file = kernel.parent / f".{kernel.name}.hmac"
    if damage == "empty":
        hmac_file.write_bytes(b"")
    elif damage == "no digest":
        hmac_file.write_text(write_hmac(kernel).read_text()[:64] + "\n")  # cut off while written
    elif damage == "directory":
        hmac_file.mkdir()
    else:
        os.mkfifo(hmac_file)
    done: list[dict[str, EntryHealth]] = []
    reader = threading.Thread(target=lambda: done.append(health(tree)), daemon=True)
    reader.start()
    reader.join(60)
    assert done, "the health check hung on the HMAC file"
    [(state, message)] = companions(done[0]["fips.conf"])
    assert state is EntryState.BROKEN and message.startswith(f"{hmac_file}: "), message


def test_without_fips_no_hmac_is_needed(boot_tree: BootTree, pair: tuple[str, Path, Path]) -> None:
    install(boot_tree, pair, "plain", "ro quiet fips=1 fips=0")
    install(boot_tree, pair, "skip", "ro fips=1 rd.fips.skipkernel")
    verdicts = health(boot_tree)
    assert companions(verdicts["plain.conf"]) == [] and companions(verdicts["skip.conf"]) == []


def test_fips_without_a_fips_check_in_the_initramfs_needs_no_hmac(boot_tree: BootTree,
                                                                  pair: tuple[str, Path, Path]) -> None:
    """Debian's mkinitramfs image checks no HMAC: fips=1 only turns the kernel's FIPS mode on."""
    install(boot_tree, pair, "fips", "ro fips=1")
    verdict = health(boot_tree)["fips.conf"]
    assert companions(verdict) == [] and verdict.state is not EntryState.BROKEN, verdict.findings


def test_fips_with_an_initramfs_that_cannot_be_walked_is_unknown(boot_tree: BootTree, pair: tuple[str, Path, Path],
                                                                 dracut_fips: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.img"
    cut.write_bytes(dracut_fips.read_bytes()[:len(dracut_fips.read_bytes()) // 2])
    kernel = install(boot_tree, pair, "fips", "ro fips=1", initrd=cut)
    [(state, message)] = companions(health(boot_tree)["fips.conf"])
    assert state is EntryState.UNKNOWN, message
    assert message.startswith(f"{kernel.parent / ('.' + kernel.name + '.hmac')}: missing") \
        and "cannot be told" in message and "could not be walked" in message, message


def test_the_files_of_a_fips_check_in_an_initramfs() -> None:
    for script, place in DRACUT_FIPS.items():
        if script == "fips-load-crypto.sh":  # loads the crypto modules; checks no kernel
            assert not fips_check_name(place.encode())
            continue
        assert fips_check_name(place.encode()) and fips_check_name(b"./" + place.encode())
        assert fips_check_name(b"usr/" + place.encode())
    assert fips_check_name(b"var/lib/dracut/hooks/pre-pivot/01-fips-noboot.sh")  # newer dracut's hook directory
    assert fips_check_name(b"scripts/init-top/fips-check")  # initramfs-tools
    assert not fips_check_name(b"usr/lib/modules/6.1.0-9/kernel/crypto/fips.ko")
    assert not fips_check_name(b"lib/dracut/hooks/pre-mount/01-other.sh")
    assert not fips_check_name(b"etc/fipsmodules") and not fips_check_name(b"usr/bin/fipscheck")


def test_fips_options_as_dracut_reads_them() -> None:
    assert fips_mode("ro fips=1")
    assert fips_mode("fips=0 quiet fips=yes")
    assert not fips_mode("ro quiet")
    assert not fips_mode("fips=1 fips=0")
    assert not fips_mode("fips")  # dracut refuses a bare 'fips': no check of the kernel
    assert not fips_mode("fips=1 rd.fips.skipkernel")


def test_which_hmac_file_each_loader_makes_dracut_read(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    part = Partition(PartitionKind.BOOT)

    def entry(source: EntrySource, path: str, role: FileRole = FileRole.KERNEL) -> Entry:
        return Entry(source, "e", "e", None, (BootFile(path, role, part),), "fips=1", tmp_path / "e")

    kernel = boot / "vmlinuz-6.1.0-9"
    assert hmac_candidates(entry(EntrySource.GRUB, "/vmlinuz-6.1.0-9"), kernel, "6.1.0-9", boot) \
        == [boot / ".vmlinuz-6.1.0-9.hmac"]
    # A BLS entry in Fedora's layout: GRUB's blscfg and systemd-boot make dracut read the same file.
    assert hmac_candidates(entry(EntrySource.BLS, "/vmlinuz-6.1.0-9"), kernel, "6.1.0-9", boot) \
        == [boot / ".vmlinuz-6.1.0-9.hmac"]
    # systemd-boot's layout: beside the kernel (BOOT_IMAGE from GRUB) or by release (systemd-boot).
    linux = boot / "mid" / "6.1.0-9" / "linux"
    assert hmac_candidates(entry(EntrySource.BLS, "/mid/6.1.0-9/linux"), linux, "6.1.0-9", boot) \
        == [linux.parent / ".linux.hmac", boot / ".vmlinuz-6.1.0-9.hmac"]
    uki = boot / "EFI" / "Linux" / "os.efi"
    assert hmac_candidates(entry(EntrySource.UKI, "/EFI/Linux/os.efi", FileRole.UKI), uki, "6.1.0-9", boot) \
        == [boot / ".vmlinuz-6.1.0-9.hmac"]
    assert hmac_candidates(entry(EntrySource.UKI, "/EFI/Linux/os.efi", FileRole.UKI), uki, None, boot) == []


def test_devicetrees_must_be_flattened_devicetrees(boot_tree: BootTree, pair: tuple[str, Path, Path]) -> None:
    dtbs = sorted(QEMU_DTBS.glob("*.dtb"))
    if not dtbs:
        pytest.skip("no devicetree of QEMU's (package qemu-system-data)")
    tree = boot_tree
    shutil.copyfile(dtbs[0], tree.boot / "good.dtb")
    data = dtbs[0].read_bytes()
    (tree.boot / "cut.dtb").write_bytes(data[:len(data) // 2])
    (tree.boot / "text.dtb").write_text("not a devicetree\n")
    (tree.boot / "dir.dtb").mkdir()
    for name in ("good", "cut", "text", "dir", "gone"):
        install(tree, pair, name, "ro", devicetree=f"/{name}.dtb")
    verdicts = health(tree)
    assert companions(verdicts["good.conf"]) == []
    expected = {"cut": "devicetree truncated: its header states", "dir": "the devicetree is a directory",
                "text": "is no flattened devicetree (no magic 0xd00dfeed)"}
    for name, problem in expected.items():
        [(state, message)] = companions(verdicts[f"{name}.conf"])
        assert state is EntryState.BROKEN and verdicts[f"{name}.conf"].state is EntryState.BROKEN
        assert message.startswith(f"{tree.boot / (name + '.dtb')}: {problem}"), message
    # A missing one is the judge's finding on the files the entry names, not a second one here.
    gone = verdicts["gone.conf"]
    assert companions(gone) == [] and gone.state is EntryState.BROKEN
    assert any(f.check is Check.FILE and str(tree.boot / "gone.dtb") in f.message for f in gone.findings)
