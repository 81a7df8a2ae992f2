"""BLS entries: which boot files each entry references, and how often a path is referenced
(the inventory's counts, by cache key)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootwatch.entries.bls_type1 import parse_type1, read_type1_entries
from bootwatch.entries.inventory import InventorySettings, read_inventory
from bootwatch.entries.model import Partition, PartitionKind

BOOT = Partition(PartitionKind.BOOT)


def paths_of(text: str) -> list[str]:
    entry = parse_type1(text, Path("x.conf"), BOOT)
    assert entry is not None
    return list(dict.fromkeys(f.path for f in entry.files))


def counts_in(boot: Path) -> dict[str, int]:
    inventory = read_inventory(InventorySettings(boot))
    assert inventory.unknown is None, inventory.unknown
    return inventory.reference_counts()


def test_every_file_key_is_a_reference() -> None:
    text = """
# a comment: linux /not-this
title Debian 12
version 6.1.0
linux /vmlinuz-6.1.0
initrd /intel-ucode.img /initramfs-6.1.0.img
initrd /extra.img
efi /EFI/Linux/uki.efi
devicetree /dtbs/board.dtb
devicetree-overlay /dtbs/o1.dtbo /dtbs/o2.dtbo
options root=/dev/sda1 initrd=/not-a-reference
"""
    entry = parse_type1(text, Path("x.conf"), BOOT)
    assert entry is not None and entry.title == "Debian 12"
    assert sorted(f.path for f in entry.files) == sorted([
        "/vmlinuz-6.1.0", "/intel-ucode.img", "/initramfs-6.1.0.img", "/extra.img", "/EFI/Linux/uki.efi",
        "/dtbs/board.dtb", "/dtbs/o1.dtbo", "/dtbs/o2.dtbo"])


def test_tabs_and_extra_spaces_separate_keys_and_values() -> None:
    assert paths_of("linux\t/vmlinuz-1\ninitrd   /a.img \t /b.img\n") == ["/vmlinuz-1", "/a.img", "/b.img"]


def test_counts_are_per_entry_and_by_cache_key(tmp_path: Path) -> None:
    entries = tmp_path / "loader" / "entries"
    entries.mkdir(parents=True)
    # The same initrd on two lines of one entry counts once for that entry.
    (entries / "a.conf").write_text("linux /vmlinuz-1\ninitrd /initrd-1\ninitrd /ucode.img /initrd-1\n")
    (entries / "b.conf").write_text("linux /vmlinuz-1\ninitrd /ucode.img\nefi /uki.efi\n")
    (entries / "c.conf").write_text("linux /vmlinuz-3\ndevicetree /board.dtb\ninitrd //initrd-1\n")
    (entries / "no-kernel.conf").write_text("initrd /initrd-9\n")  # no linux, no efi: no entry (the spec)
    (entries / "d.conf").write_text("linux /boot/vmlinuz-2\n")  # /boot here is a directory of root
    # "//initrd-1" is the key "/initrd-1": one file, whichever way an entry spells it.
    assert counts_in(tmp_path) == {"/vmlinuz-1": 2, "/initrd-1": 2, "/ucode.img": 2, "/uki.efi": 1,
                                   "/board.dtb": 1, "/vmlinuz-2": 1, "/vmlinuz-3": 1}


def test_only_regular_conf_files_are_entries(tmp_path: Path) -> None:
    entries = tmp_path / "loader" / "entries"
    entries.mkdir(parents=True)
    (entries / "good.conf").write_text("linux /vmlinuz-good\n")
    (entries / "notes.txt").write_text("linux /vmlinuz-txt\n")
    (entries / ".hidden.conf").write_text("linux /vmlinuz-hidden\n")
    (entries / "dir.conf").mkdir()
    (entries / "huge.conf").write_bytes(b"linux /vmlinuz-huge\n" + b"#" * (2 << 20))
    os.symlink("/nonexistent", entries / "dangling.conf")
    read = read_type1_entries(entries, BOOT)
    assert [f.path for e in read.result.entries for f in e.files] == ["/vmlinuz-good"]
    # What could not be read (too large, a dangling symlink) makes the source unknown, not empty.
    assert read.result.unknown is not None


def test_a_missing_entries_directory_holds_no_entries_when_nothing_recorded_it(tmp_path: Path) -> None:
    """As far as the inventory is concerned; the references record says whether it held some before."""
    assert counts_in(tmp_path) == {}


@pytest.mark.slow
def test_counts_through_the_cli(boot_tree) -> None:
    """``count`` in ``list --json`` comes from the entries: repeated, multi-path, efi and devicetree lines."""
    for p in ("/vmlinuz-1", "/initrd-1", "/ucode.img", "/uki.efi", "/board.dtb", "/unused"):
        boot_tree.write_file(p, 512)
    boot_tree.write_entry("a", linux="/vmlinuz-1", initrd=["/ucode.img /initrd-1", "/initrd-1"])
    boot_tree.write_entry("b", linux="/vmlinuz-1", initrd=["/ucode.img"], devicetree="/board.dtb")
    boot_tree.write_entry("c", efi="/uki.efi", lines=[("initrd", "/ucode.img")])
    rc, out, err = boot_tree.cli("add", "/vmlinuz-1", "/initrd-1", "/ucode.img", "/uki.efi", "/board.dtb",
                                 "/unused")
    assert rc == 0, err
    counts = {p: row["count"] for p, row in boot_tree.list_json().items()}
    assert counts == {"/vmlinuz-1": 2, "/initrd-1": 1, "/ucode.img": 3, "/uki.efi": 1, "/board.dtb": 1,
                      "/unused": 0}
    boot_tree.remove_entry("b")
    counts = {p: row["count"] for p, row in boot_tree.list_json().items()}
    assert counts["/vmlinuz-1"] == 1 and counts["/ucode.img"] == 2 and counts["/board.dtb"] == 0
