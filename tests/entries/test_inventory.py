"""The entry inventory: which sources are read, and the cache key of every file an entry needs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bootwatch.entries.inventory import Inventory, InventorySettings, PartitionRoots, cache_key, read_inventory
from bootwatch.entries.model import BootFile, EntrySource, FileRole, Partition, PartitionKind

SAMPLES = Path(__file__).resolve().parent.parent / "realboot" / "samples"


def _file(path: str, kind: PartitionKind, **partition: str) -> BootFile:
    return BootFile(path, FileRole.KERNEL, Partition(kind, **partition))


def test_keys_on_the_boot_partition_and_on_root() -> None:
    separate = PartitionRoots(Path("/boot"), True)
    on_root = PartitionRoots(Path("/boot"), False)
    assert cache_key(_file("/vmlinuz-6.1.0", PartitionKind.BOOT), separate) == "/vmlinuz-6.1.0"
    # The loader reads /boot/vmlinuz-6.1.0 on the root filesystem: the key is relative to /boot.
    assert cache_key(_file("/boot/vmlinuz-6.1.0", PartitionKind.ROOT), on_root) == "/vmlinuz-6.1.0"
    # With /boot a filesystem of its own, /boot/... on root is hidden under the mount: not a boot file.
    assert cache_key(_file("/boot/vmlinuz-6.1.0", PartitionKind.ROOT), separate) is None
    # A BLS entry written relative to /boot on a root-filesystem /boot (as boom writes it).
    assert cache_key(_file("/vmlinuz-6.1.0", PartitionKind.ROOT), on_root) == "/vmlinuz-6.1.0"
    assert cache_key(_file("/a/./b", PartitionKind.BOOT), separate) == "/a/b"


def test_hostile_paths_get_no_key() -> None:
    roots = PartitionRoots(Path("/boot"), True, esp=Path("/efi"))
    for path in ("/../etc/shadow", "/a/../../etc", "relative", "/", "/x\0y"):
        assert cache_key(_file(path, PartitionKind.BOOT), roots) is None, path
        assert cache_key(_file(path, PartitionKind.ESP), roots) is None, path


def test_esp_keys_cannot_collide_with_boot_keys() -> None:
    uki = _file("/EFI/Linux/arch.efi", PartitionKind.ESP)
    assert cache_key(uki, PartitionRoots(Path("/boot"), True, esp=Path("/efi"))) == "/../efi/EFI/Linux/arch.efi"
    assert cache_key(uki, PartitionRoots(Path("/boot"), True, esp=Path("/boot/efi"))) == "/efi/EFI/Linux/arch.efi"
    assert cache_key(uki, PartitionRoots(Path("/boot"), True)) is None  # no ESP known
    # boom joins the key to /boot: the very file.
    assert os.path.normpath("/boot/" + "../efi/EFI/Linux/arch.efi") == "/efi/EFI/Linux/arch.efi"


def test_snapshot_boot_is_not_the_hosts_boot() -> None:
    roots = PartitionRoots(Path("/boot"), False, root_subvolume="/@")
    assert cache_key(_file("/@/boot/vmlinuz-linux", PartitionKind.UNKNOWN), roots) == "/vmlinuz-linux"
    assert cache_key(_file("/@/.snapshots/12/snapshot/boot/vmlinuz-linux", PartitionKind.UNKNOWN), roots) is None


def test_a_filesystem_uuid_of_another_disk_has_no_key(tmp_path: Path) -> None:
    # /dev/disk/by-uuid is udev's; a UUID it does not list leaves the path's shape to decide.
    roots = PartitionRoots(Path("/boot"), True,
                           devices={PartitionKind.ROOT: "/dev/sda2", PartitionKind.BOOT: "/dev/sda1"})
    unknown_uuid = _file("/vmlinuz-6.1.0", PartitionKind.BOOT, fs_uuid="00000000-0000-4000-8000-000000000000")
    assert cache_key(unknown_uuid, roots) == "/vmlinuz-6.1.0"
    by_uuid = Path("/dev/disk/by-uuid")
    links = sorted(by_uuid.iterdir()) if by_uuid.is_dir() else []
    if not links:
        pytest.skip("no /dev/disk/by-uuid links on this machine")
    foreign = _file("/vmlinuz-6.1.0", PartitionKind.BOOT, fs_uuid=links[0].name)
    assert cache_key(foreign, roots) is None  # a filesystem that is none of the host's boot partitions
    own = PartitionRoots(Path("/boot"), True, devices={PartitionKind.ROOT: "/dev/sda2",
                                                       PartitionKind.BOOT: os.path.realpath(links[0])})
    assert cache_key(foreign, own) == "/vmlinuz-6.1.0"


def _boot(tmp_path: Path) -> Path:
    boot = tmp_path / "boot"
    boot.mkdir()
    return boot


def _searched(path: str, wanted: str | None = None) -> BootFile:
    return BootFile(path, FileRole.KERNEL, Partition(PartitionKind.UNKNOWN, search_file=wanted or path))


def test_search_file_is_resolved_among_the_hosts_partitions_as_grub_would(tmp_path: Path) -> None:
    """GRUB's ``search --file X`` picks the filesystem holding X: found on exactly one of the
    host's partitions, that one; found on none or several, the path's shape gives the key and
    every key the file could have counts as referenced."""
    root, esp = tmp_path / "root", tmp_path / "efi"
    boot = root / "boot"
    boot.mkdir(parents=True)
    (esp / "EFI" / "debian").mkdir(parents=True)
    separate = PartitionRoots(boot, True, esp=esp)
    on_root = PartitionRoots(boot, False, esp=esp)

    def keys(file: BootFile, roots: PartitionRoots) -> frozenset[str]:
        return Inventory((), roots).keys(file)  # what reference_counts() counts for the file

    (boot / "vmlinuz-custom").write_bytes(b"k")
    kernel = _searched("/vmlinuz-custom")
    assert cache_key(kernel, separate) == "/vmlinuz-custom"  # on the boot partition only
    assert keys(kernel, separate) == {"/vmlinuz-custom"}
    shim = _searched("/EFI/debian/grubx64.efi")
    (esp / "EFI" / "debian" / "grubx64.efi").write_bytes(b"e")
    assert cache_key(shim, separate) == "/../../efi/EFI/debian/grubx64.efi"
    # /boot a directory of root: GRUB finds /boot/vmlinuz-custom on the root filesystem.
    on_root_kernel = _searched("/boot/vmlinuz-custom")
    assert cache_key(on_root_kernel, on_root) == "/vmlinuz-custom"
    # A file only on root, outside /boot (Debian's /vmlinuz link): not in the boot directory.
    (root / "vmlinuz").symlink_to("boot/vmlinuz-custom")
    assert cache_key(_searched("/vmlinuz"), separate) is None
    # Found nowhere (deleted: what a restore is for): the shape's key, and every candidate counts.
    gone = _searched("/vmlinuz-gone")
    assert cache_key(gone, separate) == "/vmlinuz-gone"
    assert keys(gone, separate) == {"/vmlinuz-gone", "/../../efi/vmlinuz-gone"}
    # Found on two partitions: GRUB's disk order decides, which bootwatch cannot see.
    (esp / "vmlinuz-custom").write_bytes(b"k")
    assert keys(kernel, separate) == {"/vmlinuz-custom", "/../../efi/vmlinuz-custom"}


def test_a_search_file_entry_keeps_its_kernel_referenced(tmp_path: Path) -> None:
    boot = _boot(tmp_path)
    (boot / "grub").mkdir()
    (boot / "grub" / "grub.cfg").write_text(
        "menuentry 'My kernel' {\n\tsearch --no-floppy --file --set=root /vmlinuz-custom\n"
        "\tlinux /vmlinuz-custom ro\n}\n")
    inventory = read_inventory(InventorySettings(boot))
    assert inventory.unknown is None
    assert inventory.reference_counts() == {"/vmlinuz-custom": 1}


def test_auto_reads_what_is_there_and_missing_locations_are_empty(tmp_path: Path) -> None:
    boot = _boot(tmp_path)
    inventory = read_inventory(InventorySettings(boot))
    assert inventory.unknown is None
    assert inventory.entries == ()
    assert inventory.found == ()


def test_an_explicit_source_that_is_missing_is_unknown(tmp_path: Path) -> None:
    boot = _boot(tmp_path)
    inventory = read_inventory(InventorySettings(boot, sources=(EntrySource.GRUB,)))
    assert inventory.unknown is not None and "grub.cfg" in inventory.unknown and "mounted" in inventory.unknown
    assert [r.source for r in inventory.results] == [EntrySource.GRUB]


def test_an_explicit_source_is_expected_once_not_in_each_of_its_locations(tmp_path: Path) -> None:
    boot = _boot(tmp_path)
    esp = tmp_path / "efi"
    (esp / "loader" / "entries").mkdir(parents=True)
    settings = InventorySettings(boot, sources=(EntrySource.BLS,), esp=esp)
    assert not (boot / "loader" / "entries").exists()
    # systemd-boot with every entry on the ESP: the source is there, in one of its places.
    (esp / "loader" / "entries" / "arch.conf").write_text("title arch\nlinux /arch/linux\n")
    inventory = read_inventory(settings)
    assert inventory.unknown is None, inventory.unknown
    assert [e.title for e in inventory.entries] == ["arch"]
    # None of its places there: unknown, said once, naming the first of them.
    shutil.rmtree(esp / "loader")
    inventory = read_inventory(settings)
    assert inventory.unknown is not None and "mounted" in inventory.unknown
    assert [r.unknown is not None for r in inventory.results] == [True, False]


def test_fedora_bls_with_grubenv_and_grub_cfg(tmp_path: Path) -> None:
    boot = _boot(tmp_path)
    shutil.copytree(SAMPLES / "fedora" / "loader", boot / "loader")
    shutil.copytree(SAMPLES / "fedora" / "grub2", boot / "grub2")
    inventory = read_inventory(InventorySettings(boot))
    assert inventory.unknown is None
    bls = [e for e in inventory.entries if e.source is EntrySource.BLS]
    assert len(bls) == 3
    counts = inventory.reference_counts()
    assert counts["/vmlinuz-4.18.0-553.el8_10.x86_64"] >= 1
    assert counts["/initramfs-4.18.0-553.el8_10.x86_64.img"] >= 1
    assert not any("$" in key for key in counts)  # $tuned_initrd expanded (to nothing), never a path


def test_grub_btrfs_snapshot_entries_are_seen(tmp_path: Path) -> None:
    boot = _boot(tmp_path)
    (boot / "grub").mkdir()
    for name in ("grub.cfg", "grub-btrfs.cfg"):
        shutil.copy(SAMPLES / "grub-btrfs" / name, boot / "grub" / name)
    inventory = read_inventory(InventorySettings(boot, sources=(EntrySource.GRUB,)))
    assert inventory.unknown is None, inventory.unknown
    origins = {e.origin.name for e in inventory.entries}
    assert origins == {"grub.cfg", "grub-btrfs.cfg"}
    # Snapshot entries name kernels on the boot partition: they count as references.
    counts = inventory.reference_counts()
    snapshot = [e for e in inventory.entries if e.origin.name == "grub-btrfs.cfg"]
    assert snapshot and all(counts[k] >= 1 for e in snapshot for k in inventory.keys_of(e) if k)


def test_an_esp_named_in_the_configuration_is_read(tmp_path: Path) -> None:
    boot = _boot(tmp_path)
    esp = tmp_path / "efi"
    (esp / "loader" / "entries").mkdir(parents=True)
    (esp / "loader" / "entries" / "arch+3-1.conf").write_text(
        "title Arch\nlinux /vmlinuz-linux\ninitrd /initramfs-linux.img\n")
    (boot / "loader" / "entries").mkdir(parents=True)
    (boot / "loader" / "entries" / "other.conf").write_text("title Other\nlinux /vmlinuz-linux\n")
    inventory = read_inventory(InventorySettings(boot, esp=esp))
    assert inventory.unknown is None
    ids = sorted(e.id for e in inventory.entries)
    assert ids == ["arch.conf", "other.conf"]  # the boot counter is no part of the id
    counts = inventory.reference_counts()
    assert counts == {"/vmlinuz-linux": 1, "/../efi/vmlinuz-linux": 1, "/../efi/initramfs-linux.img": 1}


def test_an_unreadable_source_makes_the_inventory_unknown(tmp_path: Path) -> None:
    boot = _boot(tmp_path)
    (boot / "grub").mkdir()
    (boot / "grub" / "grub.cfg").write_text("menuentry 'x' {\n  linux /vmlinuz-1\n")  # unterminated
    inventory = read_inventory(InventorySettings(boot))
    assert inventory.unknown is not None and "grub.cfg" in inventory.unknown


def test_a_fifo_as_grub_cfg_never_hangs_and_is_not_empty(tmp_path: Path) -> None:
    boot = _boot(tmp_path)
    (boot / "grub2").mkdir()
    os.mkfifo(boot / "grub2" / "grub.cfg")
    inventory = read_inventory(InventorySettings(boot))
    assert inventory.unknown is not None and "grub.cfg" in inventory.unknown
