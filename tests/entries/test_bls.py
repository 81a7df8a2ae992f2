"""BLS entries: which boot files each entry references, and how often a path is referenced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootwatch.entries.bls import parse_entry, read_entries, reference_counts


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
    entry = parse_entry(text, Path("x.conf"))
    assert entry.title == "Debian 12"
    assert list(entry.paths) == ["/vmlinuz-6.1.0", "/intel-ucode.img", "/initramfs-6.1.0.img", "/extra.img",
                                 "/EFI/Linux/uki.efi", "/dtbs/board.dtb", "/dtbs/o1.dtbo", "/dtbs/o2.dtbo"]


def test_tabs_and_extra_spaces_separate_keys_and_values() -> None:
    entry = parse_entry("linux\t/vmlinuz-1\ninitrd   /a.img \t /b.img\n", Path("x.conf"))
    assert list(entry.paths) == ["/vmlinuz-1", "/a.img", "/b.img"]


def test_counts_are_per_entry_and_use_exact_strings(tmp_path: Path) -> None:
    entries = tmp_path / "entries"
    entries.mkdir()
    # The same initrd on two lines of one entry counts once for that entry.
    (entries / "a.conf").write_text("linux /vmlinuz-1\ninitrd /initrd-1\ninitrd /ucode.img /initrd-1\n")
    (entries / "b.conf").write_text("linux /vmlinuz-1\ninitrd /ucode.img\nefi /uki.efi\n")
    (entries / "c.conf").write_text("devicetree /board.dtb\ninitrd //initrd-1\n")
    counts = reference_counts(read_entries(entries))
    assert counts == {"/vmlinuz-1": 2, "/initrd-1": 1, "/ucode.img": 2, "/uki.efi": 1, "/board.dtb": 1,
                      "//initrd-1": 1}


def test_only_regular_conf_files_are_entries(tmp_path: Path) -> None:
    entries = tmp_path / "entries"
    entries.mkdir()
    (entries / "good.conf").write_text("linux /vmlinuz-good\n")
    (entries / "notes.txt").write_text("linux /vmlinuz-txt\n")
    (entries / ".hidden.conf").write_text("linux /vmlinuz-hidden\n")
    (entries / "dir.conf").mkdir()
    (entries / "huge.conf").write_bytes(b"linux /vmlinuz-huge\n" + b"#" * (2 << 20))
    os.symlink("/nonexistent", entries / "dangling.conf")
    paths = [p for e in read_entries(entries) for p in e.paths]
    assert paths == ["/vmlinuz-good"]


def test_a_missing_entries_directory_means_no_references(tmp_path: Path) -> None:
    assert read_entries(tmp_path / "nope") == []
    assert reference_counts([]) == {}


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
