"""Recognise and check kernel images: x86 bzImage, PE/COFF (EFI stub kernels and UKIs), others.

* An **x86 bzImage** has the boot signature ``0xAA55`` at 0x1FE and the setup header magic
  ``HdrS`` at 0x202 (Documentation/arch/x86/boot.rst). The header says how many 512-byte setup
  sectors follow the boot sector and how many 16-byte paragraphs of protected-mode code follow
  those (``syssize``), so a truncated image is visible without decompressing anything.
* A **PE/COFF** image (an EFI stub kernel, an EFI zboot image, a unified kernel image) starts with
  ``MZ`` and has ``PE\\0\\0`` at ``e_lfanew``. We check the COFF header, the optional header
  magic and that every section and the signature (certificate table) lie inside the file. A UKI
  is a PE with a ``.linux`` section; its ``.initrd`` section is walked like any initramfs.
* **Other architectures** (arm64 and RISC-V ``Image``, ELF ``vmlinux``) are recognised and
  reported as unchecked, never as failed.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

__all__ = ["KernelError", "PeSection", "bzimage_payload", "bzimage_release", "bzimage_summary", "is_bzimage",
           "other_kernel", "parse_pe"]

PE_MAX_SECTIONS = 96  # the PE/COFF specification's limit


class KernelError(Exception):
    """The image is of a known kernel format but broken; the message says how."""


PeSection = tuple[str, int, int]  # name, file offset, size in the file


def is_bzimage(head: bytes) -> bool:
    return head[0x1FE:0x200] == b"\x55\xaa" and head[0x202:0x206] == b"HdrS"


def bzimage_summary(head: bytes, size: int) -> str:
    """Check the setup header against the file size; a one-line description."""
    setup_sects = head[0x1F1] or 4  # 0 means 4 for very old boot loaders
    syssize = int.from_bytes(head[0x1F4:0x1F8], "little")
    version = int.from_bytes(head[0x206:0x208], "little")
    if version < 0x0200:
        raise KernelError(f"bzImage setup header has impossible protocol version {version:#x}")
    expected = (setup_sects + 1) * 512 + syssize * 16
    # build.c rounds the payload up to 16 bytes, so allow that much slack.
    if size + 16 < expected:
        raise KernelError(f"truncated bzImage: the setup header announces {expected} bytes, "
                          f"the file has {size}")
    return f"x86 bzImage, boot protocol {version >> 8}.{version & 0xFF:02d}"


def bzimage_payload(head: bytes) -> tuple[int, int] | None:
    """Where the compressed kernel is in a bzImage: (offset in the file, length), from the setup
    header's ``payload_offset`` and ``payload_length`` (boot protocol 2.08+; None before). The
    build appends the decompressed size as a little-endian 32-bit number to every compressed
    payload (gzip's own trailer holds it), so it is the payload's last 4 bytes."""
    if int.from_bytes(head[0x206:0x208], "little") < 0x0208:
        return None
    setup_sects = head[0x1F1] or 4
    offset = (setup_sects + 1) * 512 + int.from_bytes(head[0x248:0x24C], "little")
    length = int.from_bytes(head[0x24C:0x250], "little")
    return (offset, length) if length >= 4 else None


def bzimage_release(f: BinaryIO, head: bytes, base: int = 0) -> str | None:
    """The kernel release (``uname -r``: ``6.1.0-57-cloud-amd64``) from the setup header's
    ``kernel_version`` string (boot protocol 2.00+: a pointer, less 0x200, to a NUL-terminated
    string whose first word is the release), or None when the header has none. ``head`` is the
    image's start, found at ``base`` in ``f`` (a UKI's ``.linux`` section)."""
    if int.from_bytes(head[0x206:0x208], "little") < 0x0200:
        return None
    pointer = int.from_bytes(head[0x20E:0x210], "little")
    if not pointer:
        return None
    f.seek(base + pointer + 0x200)
    text = f.read(256).split(b"\0", 1)[0].decode("ascii", "replace")
    words = text.split()
    return words[0] if words and text.isprintable() else None


def parse_pe(f: BinaryIO, head: bytes, size: int) -> list[PeSection] | None:
    """The sections of a PE/COFF image; None if ``head`` is not PE; KernelError if broken."""
    if head[:2] != b"MZ" or len(head) < 0x40:
        return None
    e_lfanew = int.from_bytes(head[0x3C:0x40], "little")
    if e_lfanew < 0x40 or e_lfanew + 24 > size:
        return None  # a DOS executable, or not an MZ file at all
    f.seek(e_lfanew)
    coff = f.read(24)
    if coff[:4] != b"PE\0\0":
        return None
    _machine, nsections, _ts, _symtab, _nsyms, opt_size, _chars = struct.unpack(
        "<HHIIIHH", coff[4:24])
    if not 1 <= nsections <= PE_MAX_SECTIONS:
        raise KernelError(f"PE/COFF image with {nsections} sections")
    optional = f.read(opt_size)
    if len(optional) < opt_size or len(optional) < 2:
        raise KernelError("truncated PE/COFF optional header")
    magic = int.from_bytes(optional[:2], "little")
    if magic not in (0x10B, 0x20B):
        raise KernelError(f"PE/COFF optional header has bad magic {magic:#x}")
    _check_signature_fits(optional, magic, size)
    table = f.read(40 * nsections)
    if len(table) < 40 * nsections:
        raise KernelError("truncated PE/COFF section table")
    sections: list[PeSection] = []
    for i in range(nsections):
        raw = table[40 * i:40 * i + 40]
        name = raw[:8].rstrip(b"\0").decode("ascii", "replace")
        _vsize, _vaddr, raw_size, raw_ptr = struct.unpack("<IIII", raw[8:24])
        if raw_size and raw_ptr + raw_size > size:
            raise KernelError(f"truncated PE/COFF image: section {name!r} ends at "
                              f"{raw_ptr + raw_size}, the file has {size} bytes")
        sections.append((name, raw_ptr, raw_size))
    return sections


def _check_signature_fits(optional: bytes, magic: int, size: int) -> None:
    """KernelError if the Authenticode signature (data directory 4, the certificate table, whose
    address is a file offset) ends past the end of the file."""
    dirs_at, count_at = (112, 108) if magic == 0x20B else (96, 92)
    if len(optional) < count_at + 4:
        return
    count = int.from_bytes(optional[count_at:count_at + 4], "little")
    if count > 4 and len(optional) >= dirs_at + 8 * 5:
        cert_off, cert_size = struct.unpack("<II", optional[dirs_at + 32:dirs_at + 40])
        if cert_size and cert_off + cert_size > size:
            raise KernelError(f"truncated PE/COFF image: the signature ends at "
                              f"{cert_off + cert_size}, the file has {size} bytes")


def other_kernel(head: bytes) -> str | None:
    """A description of a kernel format we recognise but do not check, or None."""
    if head[0x38:0x3C] == b"ARM\x64":
        return "arm64 Image"
    if head[0x38:0x3C] == b"RSC\x05" or head[0x30:0x38] == b"RISCV\0\0\0":
        return "RISC-V Image"
    if head[:4] == b"\x7fELF":
        return "ELF image (vmlinux)"
    if head[0x24:0x28] == b"\x18\x28\x6f\x01":
        return "ARM zImage"
    return None
