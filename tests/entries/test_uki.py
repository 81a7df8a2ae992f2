"""Type #2 entries: UKIs built from a real Debian kernel with systemd-boot's stub and objcopy.

tests/realboot/uki_build.py builds them as ukify does (the objcopy recipe of systemd-stub(7),
ukify's section addresses); hostile UKIs are real ones cut short or with a header field patched.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from realboot.grub_mkconfig import Kernel, Unavailable, cached_kernels
from realboot.uki_build import build_uki, initramfs_for, missing_tool

from bootwatch.entries.model import EntrySource, FileRole, Partition, PartitionKind
from bootwatch.entries.uki import (
    MAX_TEXT_SECTION,
    UKI_DIR,
    UkiFormatError,
    parse_sections,
    read_uki,
    read_uki_source,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the kernel packages are fetched and extracted as root"),
    pytest.mark.skipif(missing_tool() is not None, reason=f"real UKI: {missing_tool()}"),
]

ESP = Partition(PartitionKind.ESP)
OSREL = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n' \
        b'VERSION="12 (bookworm)"\nID=debian\n'
CMDLINE = b"root=UUID=0b3c2f6e-1d2a-4c5b-9e8f-7a6b5c4d3e2f ro quiet\n"


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    try:
        return cached_kernels(1)[0]
    except Unavailable as e:
        pytest.skip(f"real kernel package: {e}")


@pytest.fixture(scope="module")
def initrd(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return initramfs_for(kernel, tmp_path_factory.mktemp("initrd"))


@pytest.fixture(scope="module")
def real_uki(kernel: Kernel, initrd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real UKI, built once; tests copy it before cutting or patching it."""
    out = tmp_path_factory.mktemp("uki") / "debian.efi"
    return build_uki(out, kernel=kernel.boot / f"vmlinuz-{kernel.version}", initrd=initrd, osrel=OSREL,
                     cmdline=CMDLINE, uname=kernel.version.encode())


def esp_with(tmp_path: Path, name: str, data: bytes) -> Path:
    (tmp_path / UKI_DIR).mkdir(parents=True, exist_ok=True)
    path = tmp_path / UKI_DIR / name
    path.write_bytes(data)
    return path


def test_a_real_uki_is_one_entry(real_uki: Path, kernel: Kernel, tmp_path: Path) -> None:
    esp_with(tmp_path, f"debian-{kernel.version}.efi", real_uki.read_bytes())
    read = read_uki_source(tmp_path, ESP)
    assert read.result.known and read.refused == ()
    (entry,) = read.result.entries
    assert entry.source is EntrySource.UKI
    assert entry.id == f"debian-{kernel.version}.efi"
    assert entry.title == "Debian GNU/Linux 12 (bookworm)"
    assert entry.version == kernel.version  # .uname, not .osrel's VERSION
    assert entry.options == CMDLINE.decode().strip()
    assert entry.files == ((entry.files[0].__class__(f"/EFI/Linux/debian-{kernel.version}.efi", FileRole.UKI, ESP)),)
    assert entry.files[0].boot_path() is None  # on the ESP: not a /boot path


def test_the_sections_are_where_objcopy_put_them(real_uki: Path, kernel: Kernel) -> None:
    uki = read_uki(real_uki)
    names = [s.name for s in uki.sections]
    assert names[-5:] == [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
    linux = next(s for s in uki.sections if s.name == ".linux")
    vmlinuz = (kernel.boot / f"vmlinuz-{kernel.version}").read_bytes()
    assert linux.size == len(vmlinuz)
    with real_uki.open("rb") as f:
        f.seek(linux.offset)
        assert f.read(64) == vmlinuz[:64]
    assert uki.osrel is not None and uki.osrel["ID"] == "debian"
    assert uki.has(".initrd") and not uki.has(".dtb")


def test_boot_counting_is_no_part_of_the_id(real_uki: Path, tmp_path: Path) -> None:
    esp_with(tmp_path, "debian-6.1+2-1.efi", real_uki.read_bytes())
    esp_with(tmp_path, "other+3.efi", real_uki.read_bytes())
    ids = [e.id for e in read_uki_source(tmp_path, ESP).result.entries]
    assert ids == ["debian-6.1.efi", "other.efi"]


def test_title_and_version_fall_back_as_systemd_boot_does(kernel: Kernel, tmp_path: Path) -> None:
    vmlinuz = kernel.boot / f"vmlinuz-{kernel.version}"
    (tmp_path / UKI_DIR).mkdir(parents=True)
    build_uki(tmp_path / UKI_DIR / "a.efi", kernel=vmlinuz, initrd=None, osrel=b"NAME=Fedora\nVERSION_ID=40\n",
              cmdline=None, uname=None)
    build_uki(tmp_path / UKI_DIR / "b.efi", kernel=vmlinuz, initrd=None, osrel=b"ID=arch\nBUILD_ID=rolling\n",
              cmdline=b"quiet", uname=None)
    a, b = read_uki_source(tmp_path, ESP).result.entries
    assert (a.title, a.version, a.options) == ("Fedora", "40", "")
    assert (b.title, b.version, b.options) == ("arch", "rolling", "quiet")


def test_a_pe_without_osrel_or_linux_is_no_entry(kernel: Kernel, tmp_path: Path) -> None:
    vmlinuz = kernel.boot / f"vmlinuz-{kernel.version}"
    (tmp_path / UKI_DIR).mkdir(parents=True)
    # The bare stub and a kernel's own EFI stub are PE files in EFI/Linux that systemd-boot skips.
    esp_with(tmp_path, "stub.efi", Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub").read_bytes())
    esp_with(tmp_path, "vmlinuz.efi", vmlinuz.read_bytes())
    read = read_uki_source(tmp_path, ESP)
    assert read.result.known and read.result.entries == ()
    assert len(read.refused) == 2 and all("no .osrel or no .linux" in r for r in read.refused)


# ------------------------------------------------------------------------------------ hostile

def _pe_offset(data: bytes | bytearray) -> int:
    return int(struct.unpack_from("<I", data, 0x3C)[0])


def _section_entry(data: bytes | bytearray, name: bytes) -> int:
    pe = _pe_offset(data)
    count: int
    optional: int
    count, optional = struct.unpack_from("<H12xH", data, pe + 6)
    table = pe + 24 + optional
    for i in range(count):
        at = table + 40 * i
        if data[at:at + 8].rstrip(b"\0") == name:
            return at
    raise AssertionError(name)


def unknown_reason(tmp_path: Path, data: bytes, name: str = "bad.efi") -> str:
    """Why the source is unknown when ``data`` is the only UKI on the ESP."""
    for old in (tmp_path / UKI_DIR).glob("*") if (tmp_path / UKI_DIR).is_dir() else ():
        old.unlink()
    esp_with(tmp_path, name, data)
    result = read_uki_source(tmp_path, ESP).result
    assert not result.known and result.entries == ()
    assert result.unknown is not None and str(tmp_path / UKI_DIR / name) in result.unknown
    return result.unknown


def test_a_truncated_uki_is_unknown(real_uki: Path, tmp_path: Path) -> None:
    data = real_uki.read_bytes()
    assert "extends beyond the end of the file" in unknown_reason(tmp_path, data[:len(data) // 2])
    assert "too short for a DOS header" in unknown_reason(tmp_path, data[:10], "tiny.efi")


def test_a_section_table_outside_the_file_is_unknown(real_uki: Path, tmp_path: Path) -> None:
    data = bytearray(real_uki.read_bytes()[:4096])
    struct.pack_into("<I", data, 0x3C, 0x7FFFFFF0)
    assert "PE header offset" in unknown_reason(tmp_path, bytes(data))
    data = bytearray(real_uki.read_bytes())
    struct.pack_into("<H", data, _pe_offset(data) + 6, 96)  # 96 sections: the table runs past the headers read
    reason = unknown_reason(tmp_path, bytes(data), "many.efi")
    assert "section" in reason


def test_huge_section_sizes_are_unknown_without_reading_them(real_uki: Path, tmp_path: Path) -> None:
    data = bytearray(real_uki.read_bytes())
    osrel = _section_entry(data, b".osrel")
    struct.pack_into("<I", data, osrel + 8, 0xFFFFFFF0)   # VirtualSize
    struct.pack_into("<I", data, osrel + 16, 0xFFFFFFF0)  # SizeOfRawData
    assert "extends beyond the end of the file" in unknown_reason(tmp_path, bytes(data))
    # Within the file, but far larger than an os-release: a sparse 3 GiB costs nothing to make,
    # and nothing of it is read.
    path = tmp_path / UKI_DIR / "sparse.efi"
    data = bytearray(real_uki.read_bytes())
    osrel = _section_entry(data, b".osrel")
    struct.pack_into("<I", data, osrel + 8, 3 << 30)
    struct.pack_into("<I", data, osrel + 16, 3 << 30)
    (tmp_path / UKI_DIR / "bad.efi").unlink()
    path.write_bytes(data)
    os.truncate(path, 4 << 30)
    result = read_uki_source(tmp_path, ESP).result
    assert result.unknown is not None and f"more than the {MAX_TEXT_SECTION}" in result.unknown


def test_not_a_pe_and_not_a_file(real_uki: Path, tmp_path: Path) -> None:
    assert "no 'MZ' signature" in unknown_reason(tmp_path, b"#!/bin/sh\necho not a UKI\n")
    assert "no 'PE\\0\\0' signature" in unknown_reason(tmp_path, b"MZ" + bytes(4094))
    (tmp_path / UKI_DIR / "bad.efi").unlink()
    os.mkfifo(tmp_path / UKI_DIR / "fifo.efi")  # opened without blocking, refused for what it is
    esp_with(tmp_path, "good.efi", real_uki.read_bytes())
    read = read_uki_source(tmp_path, ESP)
    assert read.result.known and [e.id for e in read.result.entries] == ["good.efi"]
    (refused,) = read.refused
    assert refused.startswith(f"{tmp_path / UKI_DIR / 'fifo.efi'}: ") and "FIFO" in refused


def test_a_dangling_uki_is_unknown_and_a_missing_directory_is_none(tmp_path: Path) -> None:
    assert read_uki_source(tmp_path, ESP).result.known  # no EFI/Linux: no UKI installed
    (tmp_path / UKI_DIR).mkdir(parents=True)
    (tmp_path / UKI_DIR / "gone.efi").symlink_to("nowhere.efi")
    result = read_uki_source(tmp_path, ESP).result
    assert result.unknown is not None and "dangling symlink" in result.unknown


@pytest.fixture(scope="module")
def real_header(real_uki: Path) -> Iterator[tuple[bytes, int]]:
    data = real_uki.read_bytes()
    yield data[:4096], len(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), max_size=16),
       cut=st.integers(0, 4096))
def test_any_damaged_header_is_refused_or_read_never_a_crash(real_header: tuple[bytes, int],
                                                             edits: list[tuple[int, int]], cut: int) -> None:
    header, size = real_header
    data = bytearray(header)
    for at, value in edits:
        data[at] = value
    try:
        sections = parse_sections(bytes(data[:cut]), size)
    except UkiFormatError:
        return
    assert all(s.offset + s.size <= size for s in sections)
