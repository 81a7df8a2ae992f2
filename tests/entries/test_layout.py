"""Finding the ESP, XBOOTLDR and /boot from the mount table, as bootctl does, and reading their entries.

The mount tables are /proc/self/mountinfo lines in proc(5)'s format, parsed by bootwatch.linux's
parser; the automount line is what systemd's gpt-auto-generator leaves on /efi before the first
access (``autofs systemd-1 rw,fd=..,pgrp=1,timeout=120,minproto=5,maxproto=5,direct``). The udev
records are in udev's database format (``E:KEY=VALUE`` lines, ``/run/udev/data/b<maj>:<min>``),
with the key ``ID_PART_ENTRY_TYPE`` that udev's blkid builtin sets.
"""

from __future__ import annotations

from pathlib import Path

from bootwatch.entries.layout import (
    ESP_TYPE_GUID,
    XBOOTLDR_TYPE_GUID,
    Evidence,
    MountState,
    Role,
    detect_layout,
    host_layout,
    read_boot_entries,
    type1_locations,
    uki_locations,
)
from bootwatch.entries.model import EntrySource, PartitionKind
from bootwatch.linux import MountInfo, parse_mountinfo_line

ROOT = "29 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw"


def mounts(*lines: str) -> list[MountInfo]:
    parsed = [parse_mountinfo_line(line) for line in (ROOT, *lines)]
    assert all(m is not None for m in parsed)
    return [m for m in parsed if m is not None]


def udev(tmp_path: Path, dev: str, guid: str) -> Path:
    data = tmp_path / "udev"
    data.mkdir(exist_ok=True)
    (data / f"b{dev}").write_text(f"S:disk/by-partuuid/0f0e\nI:1234\nE:ID_PART_ENTRY_SCHEME=gpt\n"
                                  f"E:ID_PART_ENTRY_TYPE={guid}\nE:ID_FS_TYPE=vfat\nG:systemd\n")
    return data


def test_esp_at_efi_and_xbootldr_at_boot_by_type_guid(tmp_path: Path) -> None:
    data = udev(tmp_path, "259:1", ESP_TYPE_GUID)
    udev(tmp_path, "259:2", XBOOTLDR_TYPE_GUID.upper())
    layout = detect_layout(mounts("40 29 259:1 / /efi rw - vfat /dev/nvme0n1p1 rw",
                                  "41 29 259:2 / /boot rw - ext4 /dev/nvme0n1p2 rw"),
                           udev_data=data, prefix=tmp_path)
    assert layout.esp is not None and layout.xbootldr is not None
    assert (layout.esp.mount_point, layout.esp.evidence) == ("/efi", Evidence.TYPE_GUID)
    assert (layout.xbootldr.mount_point, layout.xbootldr.role) == ("/boot", Role.XBOOTLDR)
    assert layout.dollar_boot is layout.xbootldr and not layout.boot_on_root
    dirs = [(loc.directory, loc.partition.kind) for loc in type1_locations(layout, prefix=tmp_path)]
    assert dirs == [(tmp_path / "boot/loader/entries", PartitionKind.BOOT),
                    (tmp_path / "efi/loader/entries", PartitionKind.ESP)]
    assert [loc.directory for loc in uki_locations(layout, prefix=tmp_path)] == [
        tmp_path / "boot/EFI/Linux", tmp_path / "efi/EFI/Linux"]


def test_without_udev_a_vfat_with_efi_is_the_esp_and_boot_on_root(tmp_path: Path) -> None:
    (tmp_path / "boot/efi/EFI").mkdir(parents=True)
    layout = detect_layout(mounts("40 29 254:2 / /boot/efi rw - vfat /dev/vda2 rw"),
                           udev_data=tmp_path / "no-udev", prefix=tmp_path)
    assert layout.esp is not None and layout.esp.evidence is Evidence.VFAT_EFI_DIR
    assert layout.xbootldr is None and layout.boot_on_root
    kinds = [(loc.directory, loc.partition.kind) for loc in type1_locations(layout, prefix=tmp_path)]
    assert kinds == [(tmp_path / "boot/loader/entries", PartitionKind.ROOT),
                     (tmp_path / "boot/efi/loader/entries", PartitionKind.ESP)]


def test_a_vfat_without_efi_or_another_type_is_no_esp(tmp_path: Path) -> None:
    (tmp_path / "efi").mkdir()
    data = udev(tmp_path, "254:3", "0fc63daf-8483-4772-8e79-3d69d8477de4")  # Linux filesystem data
    layout = detect_layout(mounts("40 29 254:2 / /efi rw - vfat /dev/vda2 rw",
                                  "41 29 254:3 / /boot rw - vfat /dev/vda3 rw"), udev_data=data, prefix=tmp_path)
    assert layout.esp is None and layout.xbootldr is None
    assert layout.boot is not None and layout.boot.role is Role.BOOT  # a separate /boot all the same


def test_the_esp_mounted_at_boot(tmp_path: Path) -> None:
    data = udev(tmp_path, "254:2", ESP_TYPE_GUID)
    layout = detect_layout(mounts("40 29 254:2 / /boot rw - vfat /dev/vda2 rw"), udev_data=data, prefix=tmp_path)
    assert layout.esp is not None and layout.esp is layout.boot and layout.dollar_boot is layout.esp
    locations = type1_locations(layout, prefix=tmp_path)
    assert [(loc.directory, loc.partition.kind) for loc in locations] == [
        (tmp_path / "boot/loader/entries", PartitionKind.BOOT)]  # once, not as /boot and again as the ESP


def test_an_automounted_esp_is_present_not_mounted_and_never_looked_into(tmp_path: Path) -> None:
    # What is under the mount point now would be hidden by the ESP once mounted: not the ESP's contents.
    (tmp_path / "efi/loader/entries").mkdir(parents=True)
    (tmp_path / "efi/EFI/Linux").mkdir(parents=True)
    layout = detect_layout(mounts("48 29 0:41 / /efi rw,relatime shared:26 - autofs systemd-1 "
                                  "rw,fd=46,pgrp=1,timeout=120,minproto=5,maxproto=5,direct,pipe_ino=18370"),
                           udev_data=tmp_path / "no-udev", prefix=tmp_path)
    assert layout.esp is not None and layout.esp.state is MountState.AUTOMOUNT
    reads = read_boot_entries(layout, prefix=tmp_path)
    esp_reads = [r.result for r in reads if r.result.location.is_relative_to(tmp_path / "efi")]
    assert [r.source for r in esp_reads] == [EntrySource.BLS, EntrySource.UKI]
    assert all(not r.known and r.unknown and "automount point that is not mounted" in r.unknown for r in esp_reads)
    # /boot/loader/entries of the root filesystem does not exist: known, no entries there.
    (root_read,) = [r.result for r in reads if r.result.location == tmp_path / "boot/loader/entries"]
    assert root_read.known and root_read.entries == ()


def test_an_automount_that_is_mounted_is_the_partition_under_it(tmp_path: Path) -> None:
    data = udev(tmp_path, "259:1", ESP_TYPE_GUID)
    layout = detect_layout(mounts("48 29 0:41 / /efi rw - autofs systemd-1 rw,fd=46,direct",
                                  "60 48 259:1 / /efi rw - vfat /dev/nvme0n1p1 rw"),
                           udev_data=data, prefix=tmp_path)
    assert layout.esp is not None and layout.esp.state is MountState.MOUNTED


def test_automounted_esp_and_xbootldr(tmp_path: Path) -> None:
    layout = detect_layout(mounts("48 29 0:41 / /efi rw - autofs systemd-1 rw,fd=46,direct",
                                  "49 29 0:42 / /boot rw - autofs systemd-1 rw,fd=47,direct"),
                           udev_data=tmp_path, prefix=tmp_path)
    assert layout.esp is not None and layout.esp.mount_point == "/efi"
    assert layout.xbootldr is not None and layout.xbootldr.mount_point == "/boot"
    assert all(not r.result.known for r in read_boot_entries(layout, prefix=tmp_path))


def test_read_boot_entries_reads_every_place(tmp_path: Path) -> None:
    data = udev(tmp_path, "259:1", ESP_TYPE_GUID)
    (tmp_path / "efi/loader/entries").mkdir(parents=True)
    (tmp_path / "efi/loader/entries/tok-6.1+2.conf").write_text("title ESP\nlinux /tok/6.1/linux\n")
    (tmp_path / "boot/loader/entries").mkdir(parents=True)
    (tmp_path / "boot/loader/entries/fedora.conf").write_text("title Root\nlinux /boot/vmlinuz-6.2\n")
    layout = detect_layout(mounts("40 29 259:1 / /efi rw - vfat /dev/nvme0n1p1 rw"), udev_data=data,
                           prefix=tmp_path)
    reads = read_boot_entries(layout, prefix=tmp_path)
    assert all(r.result.known for r in reads)
    entries = [e for r in reads for e in r.result.entries]
    assert [(e.id, e.files[0].partition.kind, e.files[0].boot_path()) for e in entries] == [
        ("fedora.conf", PartitionKind.ROOT, "/vmlinuz-6.2"), ("tok-6.1.conf", PartitionKind.ESP, None)]


def test_the_hosts_own_mount_table_is_read_without_error() -> None:
    layout = host_layout()
    # Whatever this machine has: every location is either readable or said to be unknown.
    for read in read_boot_entries(layout):
        assert read.result.known or read.result.unknown
