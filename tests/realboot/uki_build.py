"""Unified kernel images built as ``ukify`` builds them, from a real Debian kernel package.

Debian 12's systemd (252) ships no ``ukify`` (it came with systemd 253), so the image is made
with the ``objcopy`` recipe of systemd-stub(7) on Debian's real stub
(``/usr/lib/systemd/boot/efi/linuxx64.efi.stub``, package ``systemd-boot-efi``), with the
section addresses ukify computes: after the stub's last section, each new section at the next
multiple of the stub's ``SectionAlignment`` (read with ``objdump -p``), in ukify's order
(``.osrel``, ``.cmdline``, ``.uname``, then ``.initrd`` and ``.linux``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from realboot.grub_mkconfig import Kernel, _cpio

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
INSTALL_HINT = "apt-get install -y --no-install-recommends systemd-boot-efi binutils"


def missing_tool() -> str | None:
    missing = [t for t in ("objcopy", "objdump", "cpio", "gzip") if shutil.which(t) is None]
    if missing or not STUB.is_file():
        return f"{', '.join(missing) or STUB} missing ({INSTALL_HINT})"
    return None


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _stub_layout(stub: Path) -> tuple[int, int]:
    """The stub's SectionAlignment and the first address after its last section."""
    headers = subprocess.run(["objdump", "-p", str(stub)], capture_output=True, text=True, check=True).stdout
    match = re.search(r"^SectionAlignment\s+([0-9a-fA-F]+)", headers, re.MULTILINE)
    assert match, "objdump -p printed no SectionAlignment"
    alignment = int(match.group(1), 16)
    sections = subprocess.run(["objdump", "-h", str(stub)], capture_output=True, text=True, check=True).stdout
    end = 0
    for line in sections.splitlines():
        fields = line.split()
        if len(fields) == 7 and fields[0].isdigit():
            end = max(end, int(fields[3], 16) + int(fields[2], 16))
    return alignment, end


def initramfs_for(kernel: Kernel, workdir: Path) -> Path:
    """A gzip'd newc cpio holding the kernel's ``usr/lib/modules/<version>`` (what update-initramfs adds)."""
    tree = workdir / f"initramfs-tree-{kernel.version}"
    (tree / "usr" / "lib" / "modules" / kernel.version).mkdir(parents=True)
    (tree / "init").write_text("#!/bin/sh\n")
    out = workdir / f"initrd.img-{kernel.version}"
    _cpio(tree, out, gzip=True)
    return out


def build_uki(out: Path, *, kernel: Path, initrd: Path | None, osrel: bytes, cmdline: bytes | None,
              uname: bytes | None, stub: Path = STUB) -> Path:
    """Write the UKI ``out`` from these parts with ``objcopy``; a part that is None is left out."""
    alignment, offset = _stub_layout(stub)
    offset = _align_up(offset, alignment)
    parts = out.parent / f".{out.name}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    args: list[str] = []
    for name, content in ((".osrel", osrel), (".cmdline", cmdline), (".uname", uname),
                          (".initrd", initrd), (".linux", kernel)):
        if content is None:
            continue
        if isinstance(content, Path):
            source = content
        else:
            source = parts / name.lstrip(".")
            source.write_bytes(content)
        args += ["--add-section", f"{name}={source}", "--change-section-vma", f"{name}={offset:#x}"]
        offset = _align_up(offset + source.stat().st_size, alignment)
    subprocess.run(["objcopy", *args, str(stub), str(out)], capture_output=True, text=True, check=True)
    shutil.rmtree(parts)
    return out
