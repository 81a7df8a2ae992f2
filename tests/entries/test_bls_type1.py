"""The BLS type #1 reader on what the real ``kernel-install add`` writes, on Fedora/RHEL's entries
with ``grubenv``, and on the spec's keys.

tests/realboot/kernel_install.py runs Debian 12's real kernel-install (``layout=bls``) for two
real Debian kernel packages in three layouts: a separate /boot (with ``/etc/kernel/tries``), /boot
as a directory of the root filesystem, and $BOOT on an ESP at /efi. The Fedora sample is
tests/realboot/samples/fedora (its provenance is in tests/realboot/README.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from realboot.grub_mkconfig import Unavailable, cached_kernels
from realboot.kernel_install import BlsLayout, InstalledBls, missing_prerequisite, run_kernel_install

from bootwatch.entries.bls_type1 import parse_type1, read_type1_entries
from bootwatch.entries.grubenv import GrubEnv, read_grubenv
from bootwatch.entries.model import EntrySource, FileRole, Partition, PartitionKind

SAMPLES = Path(__file__).resolve().parents[1] / "realboot" / "samples"
FEDORA = SAMPLES / "fedora"
BOOT = Partition(PartitionKind.BOOT)
ROOT = Partition(PartitionKind.ROOT)
ESP = Partition(PartitionKind.ESP)
PARTITION = {BlsLayout.SEPARATE_BOOT: BOOT, BlsLayout.BOOT_ON_ROOT: ROOT, BlsLayout.ESP: ESP}
FILESYSTEM = {BlsLayout.SEPARATE_BOOT: "boot", BlsLayout.BOOT_ON_ROOT: "root", BlsLayout.ESP: "esp"}

NO_KERNEL_INSTALL = pytest.mark.skipif(missing_prerequisite() is not None,
                                       reason=f"real kernel-install: {missing_prerequisite()}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[BlsLayout, InstalledBls]]:
    try:
        kernels = cached_kernels(2)
    except Unavailable as e:
        pytest.skip(f"real kernel-install: {e}")
    base = tmp_path_factory.mktemp("kernel-install")
    yield {layout: run_kernel_install(layout, kernels, base / layout.value,
                                      tries=3 if layout is BlsLayout.SEPARATE_BOOT else None)
           for layout in BlsLayout}


@pytest.mark.root
@pytest.mark.slow
@NO_KERNEL_INSTALL
@pytest.mark.parametrize("layout", list(BlsLayout))
def test_kernel_install_entries(installed: dict[BlsLayout, InstalledBls], layout: BlsLayout) -> None:
    got = installed[layout]
    read = read_type1_entries(got.entries_dir, PARTITION[layout])
    assert read.result.known and read.refused == ()
    entries = read.result.entries
    token = got.machine_id
    prefix = "/boot" if layout is BlsLayout.BOOT_ON_ROOT else ""
    assert [e.version for e in entries] == [k.version for k in sorted(got.kernels, key=lambda k: k.version)]
    for entry in entries:
        v = entry.version
        assert entry.source is EntrySource.BLS
        # /etc/kernel/tries made the files NAME+3.conf; the id is NAME.conf.
        assert entry.id == f"{token}-{v}.conf"
        assert entry.origin.name == (f"{token}-{v}+3.conf" if layout is BlsLayout.SEPARATE_BOOT else entry.id)
        assert entry.title == "Debian GNU/Linux 12 (bookworm)"
        assert entry.machine_id == token and entry.sort_key == "debian"
        assert entry.options.endswith(f" ro quiet systemd.machine_id={token}")
        assert [(f.path, f.role) for f in entry.files] == [
            (f"{prefix}/{token}/{v}/linux", FileRole.KERNEL),
            (f"{prefix}/{token}/{v}/initrd.img-{v}", FileRole.INITRD)]
        # Every path is a file on the partition the entry is on, as kernel-install put it there.
        assert {f.path for f in entry.files} <= got.files[FILESYSTEM[layout]]
        # ... and maps to /boot as the cache keys it (the /boot/ prefix dropped on the root
        # filesystem); a file on the ESP has no /boot path.
        for f in entry.files:
            assert f.boot_path() == (None if layout is BlsLayout.ESP else f"/{token}/{v}/{f.path.rsplit('/', 1)[1]}")


@pytest.mark.root
@pytest.mark.slow
@NO_KERNEL_INSTALL
def test_boot_path_mapping_in_each_layout(installed: dict[BlsLayout, InstalledBls]) -> None:
    mapped = {}
    for layout, got in installed.items():
        entry = read_type1_entries(got.entries_dir, PARTITION[layout]).result.entries[0]
        mapped[layout] = [f.boot_path() for f in entry.files]
    token_sep, token_root = installed[BlsLayout.SEPARATE_BOOT].machine_id, installed[BlsLayout.BOOT_ON_ROOT].machine_id
    v = installed[BlsLayout.SEPARATE_BOOT].kernels[-1].version
    assert mapped[BlsLayout.SEPARATE_BOOT][0] == f"/{token_sep}/{v}/linux"
    assert mapped[BlsLayout.BOOT_ON_ROOT][0] == f"/{token_root}/{v}/linux"  # /boot/ dropped
    assert mapped[BlsLayout.ESP] == [None, None]


@pytest.mark.root
@pytest.mark.slow
@NO_KERNEL_INSTALL
def test_a_counted_down_entry_keeps_its_id(installed: dict[BlsLayout, InstalledBls], tmp_path: Path) -> None:
    got = installed[BlsLayout.SEPARATE_BOOT]
    entries = tmp_path / "entries"
    entries.mkdir()
    # systemd-boot renames NAME+3.conf to NAME+2-1.conf when it boots it, and
    # systemd-bless-boot to NAME.conf once the boot is good: the same entry throughout.
    first, second = sorted(got.entries_dir.iterdir())
    (entries / first.name.replace("+3.conf", "+2-1.conf")).write_bytes(first.read_bytes())
    (entries / second.name.replace("+3.conf", ".conf")).write_bytes(second.read_bytes())
    before = [e.id for e in read_type1_entries(got.entries_dir, BOOT).result.entries]
    after = [e.id for e in read_type1_entries(entries, BOOT).result.entries]
    assert before == after


# ----------------------------------------------------------------------- Fedora/RHEL with grubenv

def test_fedora_entries_with_their_grubenv(caplog: pytest.LogCaptureFixture) -> None:
    env = read_grubenv(FEDORA / "grub2" / "grubenv")
    with caplog.at_level(logging.DEBUG, logger="bootwatch.entries"):
        read = read_type1_entries(FEDORA / "loader" / "entries", BOOT, grubenv=env)
    assert read.result.known
    by_version = {e.version: e for e in read.result.entries}
    entry = by_version["4.18.0-553.el8_10.x86_64"]
    kernelopts = env.get("kernelopts")
    assert kernelopts
    # $kernelopts expanded; $tuned_params is set and empty: nothing.
    assert entry.options == " ".join(kernelopts.split())
    # $tuned_initrd is empty: dropped from the initrd line, no file, no error.
    assert [(f.path, f.role) for f in entry.files] == [
        ("/vmlinuz-4.18.0-553.el8_10.x86_64", FileRole.KERNEL),
        ("/initramfs-4.18.0-553.el8_10.x86_64.img", FileRole.INITRD)]
    assert entry.id == "3f1a2b4c5d6e4f708192a3b4c5d6e7f8-4.18.0-553.el8_10.x86_64.conf"
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]


def test_fedora_entries_without_a_grubenv_drop_path_variables_with_a_debug_line(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="bootwatch.entries"):
        read = read_type1_entries(FEDORA / "loader" / "entries", BOOT)
    assert read.result.known
    entry = next(e for e in read.result.entries if e.version == "4.18.0-553.el8_10.x86_64")
    assert entry.options == "$kernelopts $tuned_params"  # kept as written
    assert [f.path for f in entry.files_with_role(FileRole.INITRD)] == ["/initramfs-4.18.0-553.el8_10.x86_64.img"]
    tuned = [r for r in caplog.records if "$tuned_initrd" in r.getMessage() and entry.origin.name in r.getMessage()]
    assert len(tuned) == 1 and tuned[0].levelno == logging.DEBUG
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]


def test_a_set_tuned_initrd_is_a_second_initrd(tmp_path: Path) -> None:
    conf = (FEDORA / "loader" / "entries" / "3f1a2b4c5d6e4f708192a3b4c5d6e7f8-4.18.0-553.el8_10.x86_64.conf")
    env = GrubEnv(tmp_path / "grubenv", {"kernelopts": "root=/dev/sda1 ro", "tuned_params": "skew_tick=1",
                                         "tuned_initrd": "/tuned-initrd.img"})
    entry = parse_type1(conf.read_text(), conf, ROOT, grubenv=env)
    assert entry is not None
    assert [f.path for f in entry.files_with_role(FileRole.INITRD)] == [
        "/initramfs-4.18.0-553.el8_10.x86_64.img", "/tuned-initrd.img"]
    assert entry.options == "root=/dev/sda1 ro skew_tick=1"


def test_an_unreadable_grubenv_makes_a_path_variable_unknown(tmp_path: Path) -> None:
    (tmp_path / "grubenv").mkdir()  # not a regular file: unknown, not "no variables"
    env = read_grubenv(tmp_path / "grubenv")
    assert env.unknown is not None
    read = read_type1_entries(FEDORA / "loader" / "entries", BOOT, grubenv=env)
    assert not read.result.known
    assert read.result.unknown is not None and "$tuned_initrd" in read.result.unknown
    # The rescue entry has no variable in a path: still read.
    assert [e.version for e in read.result.entries] == ["0-rescue-3f1a2b4c5d6e4f708192a3b4c5d6e7f8"]


# ------------------------------------------------------------------------------- the spec's keys

def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)
    return directory / name


def test_every_key(tmp_path: Path) -> None:
    write(tmp_path, "arm+1-2.conf", "# comment\n"
          "title   First\ntitle\tBoard 6.1\nversion 6.1.0\nmachine-id 0123\nsort-key debian\n"
          "linux /0123/6.1.0/linux\ninitrd /0123/6.1.0/ucode.img\ninitrd /0123/6.1.0/initrd\n"
          "devicetree /0123/6.1.0/board.dtb\ndevicetree-overlay /o/a.dtbo /o/b.dtbo\n"
          "options root=/dev/mmcblk0p2\noptions   ro  quiet\narchitecture aa64\n")
    write(tmp_path, "shell.conf", "title EFI shell\nefi /EFI/tools/shell.efi\n")
    write(tmp_path, "broken.conf", "title nothing to boot\noptions quiet\n")
    read = read_type1_entries(tmp_path, BOOT)
    assert read.result.known
    assert read.refused == (f"{tmp_path / 'broken.conf'}: neither 'linux' nor 'efi'; not a valid boot entry",)
    board, shell = read.result.entries
    assert (board.id, board.title, board.version, board.machine_id, board.sort_key) == (
        "arm.conf", "Board 6.1", "6.1.0", "0123", "debian")
    assert board.options == "root=/dev/mmcblk0p2 ro quiet"
    assert [(f.path, f.role) for f in board.files] == [
        ("/0123/6.1.0/linux", FileRole.KERNEL), ("/0123/6.1.0/ucode.img", FileRole.INITRD),
        ("/0123/6.1.0/initrd", FileRole.INITRD), ("/0123/6.1.0/board.dtb", FileRole.DEVICETREE),
        ("/o/a.dtbo", FileRole.DEVICETREE), ("/o/b.dtbo", FileRole.DEVICETREE)]
    assert (shell.id, shell.title, shell.version) == ("shell.conf", "EFI shell", None)
    assert [(f.path, f.role) for f in shell.files] == [("/EFI/tools/shell.efi", FileRole.EFI)]


def test_an_unreadable_directory_or_entry_is_unknown_never_empty(tmp_path: Path) -> None:
    missing = read_type1_entries(tmp_path / "nowhere", BOOT).result
    assert not missing.known and missing.entries == ()
    write(tmp_path / "entries", "good.conf", "linux /vmlinuz\n")
    (tmp_path / "entries" / "gone.conf").symlink_to("nowhere.conf")
    result = read_type1_entries(tmp_path / "entries", BOOT).result
    assert not result.known and result.unknown is not None and "gone.conf" in result.unknown
    assert [e.id for e in result.entries] == ["good.conf"]  # what could be read, for display only
    os.mkfifo(tmp_path / "entries" / "fifo.conf")
    (tmp_path / "entries" / "gone.conf").unlink()
    read = read_type1_entries(tmp_path / "entries", BOOT)
    assert read.result.known and len(read.refused) == 1 and "FIFO" in read.refused[0]
