"""Build real boot images for the tests with the real tools: filesystems, cpio chains, kernels.

Filesystem images come from mkfs.ext4 -d, mkfs.vfat + mcopy, mksquashfs, xorriso and mkfs.erofs;
initramfs chains from ``cpio -o -H newc`` and the real compressors. Kernel images are synthetic
but laid out as the boot protocol and the PE/COFF specification say.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

COMPRESSORS: dict[str, list[str]] = {
    "lzma": ["xz", "-c", "--format=lzma"],
    "gzip": ["gzip", "-c", "-9"],
    "zstd": ["zstd", "-c", "-q", "-19"],
    "xz": ["xz", "-c", "--check=crc32"],
    "bzip2": ["bzip2", "-c"],
    "lz4": ["lz4", "-l", "-c", "-q"],
}


def have(*tools: str) -> bool:
    return all(shutil.which(tool) for tool in tools)


def make_tree(top: Path, *, symlink: bool = True) -> Path:
    """A small tree: text files, a 300 KiB random file, a nested directory, maybe a symlink."""
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "hello.txt").write_text("hello\n")
    (top / "sub" / "random.bin").write_bytes(os.urandom(300 * 1024))
    (top / "sub" / "deeper" / "note").write_text("x" * 5000)
    (top / "empty").write_bytes(b"")
    if symlink:
        (top / "link").symlink_to("hello.txt")
    return top


def _run(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=True, capture_output=True, **kwargs)  # type: ignore


def build_ext4(out: Path, tree: Path, size_mb: int = 8) -> Path:
    _run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(out), f"{size_mb}M"])
    return out


def build_vfat(out: Path, tree: Path, size_mb: int = 8) -> Path:
    with open(out, "wb") as f:
        f.truncate(size_mb << 20)
    _run(["mkfs.vfat", str(out)])
    entries = [str(p) for p in sorted(tree.iterdir()) if not p.is_symlink()]
    _run(["mcopy", "-s", "-i", str(out), *entries, "::"])
    return out


def build_squashfs(out: Path, tree: Path) -> Path:
    _run(["mksquashfs", str(tree), str(out), "-noappend", "-quiet", "-no-progress"])
    return out


def build_iso(out: Path, tree: Path) -> Path:
    _run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-o", str(out), str(tree)])
    return out


def build_erofs(out: Path, tree: Path) -> Path:
    _run(["mkfs.erofs", str(out), str(tree)])
    return out


FS_BUILDERS = {
    "ext4": (build_ext4, ("mkfs.ext4",)),
    "vfat": (build_vfat, ("mkfs.vfat", "mcopy")),
    "squashfs": (build_squashfs, ("mksquashfs",)),
    "iso9660": (build_iso, ("xorriso",)),
    "erofs": (build_erofs, ("mkfs.erofs",)),
}


def kernel_supports(fstype: str) -> bool:
    """Whether /proc/filesystems lists the type now (modules may still load on mount)."""
    names = {line.split()[-1] for line in
             Path("/proc/filesystems").read_text().splitlines() if line.strip()}
    return fstype in names


def cpio_newc(tree: Path, fmt: str = "newc") -> bytes:
    """``cpio -o -H newc`` of everything in ``tree``, as a kernel initramfs is built."""
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    names.insert(0, ".")
    return _run(["cpio", "-o", "-H", fmt, "--quiet"], cwd=str(tree),
                input="\n".join(names).encode() + b"\n").stdout


def compress(data: bytes, method: str) -> bytes:
    return _run(COMPRESSORS[method], input=data).stdout


def microcode_tree(top: Path) -> Path:
    ucode = top / "kernel" / "x86" / "microcode"
    ucode.mkdir(parents=True)
    (ucode / "GenuineIntel.bin").write_bytes(os.urandom(10 * 1024))
    return top


def build_initramfs(out: Path, work: Path, methods: Sequence[str],
                    microcode: bool = True) -> Path:
    """An early microcode cpio (uncompressed) followed by one member per method in ``methods``.

    "none" appends another uncompressed cpio.
    """
    parts: list[bytes] = []
    if microcode:
        parts.append(cpio_newc(microcode_tree(work / "early")))
    for i, method in enumerate(methods):
        tree = make_tree(work / f"main{i}")
        archive = cpio_newc(tree)
        parts.append(archive if method == "none" else compress(archive, method))
        # Keep the next member 4-byte aligned, as dracut and the kernel expect.
        parts[-1] += b"\0" * (-len(parts[-1]) % 4)
    out.write_bytes(b"".join(parts))
    return out


def bzimage(payload_paragraphs: int = 64, setup_sects: int = 1) -> bytes:
    """A minimal x86 bzImage: boot sector, setup header with ``HdrS``, protected-mode payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x1F4:0x1F8] = payload_paragraphs.to_bytes(4, "little")
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    setup[0x206:0x208] = (0x020F).to_bytes(2, "little")
    return bytes(setup) + os.urandom(payload_paragraphs * 16)


def bzimage_with_payload(method: str, kernel: bytes | None = None, recorded: int | None = None) -> bytes:
    """A bzImage whose setup header points at a ``method``-compressed kernel (an ELF image unless
    ``kernel`` says otherwise), with the decompressed size appended as the kernel build appends
    it (gzip's own trailer is that size); ``recorded`` overrides the appended size."""
    if kernel is None:  # code compresses: matches, whose offsets a corruption breaks (lz4 has no checksum)
        kernel = b"\x7fELF\x02\x01\x01" + b"".join(b"mov %d, %%rax; call f%d\n" % (i % 977, i % 131)
                                                     for i in range(20_000))
    stream = compress(kernel, method)
    if method != "gzip":
        stream += (len(kernel) if recorded is None else recorded).to_bytes(4, "little")
    elif recorded is not None:
        stream = stream[:-4] + recorded.to_bytes(4, "little")
    lead = 512  # decompressor code before the payload, as in a real build
    paragraphs = -(-(lead + len(stream) + 64) // 16)
    image = bytearray(bzimage(paragraphs))
    start = 2 * 512  # setup_sects 1: boot sector + one setup sector
    image[0x248:0x24C] = lead.to_bytes(4, "little")
    image[0x24C:0x250] = len(stream).to_bytes(4, "little")
    image[start + lead:start + lead + len(stream)] = stream
    return bytes(image)


def pe_image(sections: Sequence[tuple[str, bytes]], signature: bytes | None = None) -> bytes:
    """A PE32+ image with the given sections (file-aligned to 512 bytes) and an optional
    Authenticode-style certificate table appended at the end."""
    e_lfanew = 0x40
    opt_size = 240
    table_at = e_lfanew + 24 + opt_size
    headers = table_at + 40 * len(sections)
    pos = (headers + 511) // 512 * 512
    layout = []
    for name, data in sections:
        layout.append((name, pos, data))
        pos += (len(data) + 511) // 512 * 512
    image = bytearray(pos)
    image[:2] = b"MZ"
    image[0x3C:0x40] = e_lfanew.to_bytes(4, "little")
    image[e_lfanew:e_lfanew + 4] = b"PE\0\0"
    image[e_lfanew + 4:e_lfanew + 24] = struct.pack("<HHIIIHH", 0x8664, len(sections), 0, 0, 0,
                                                    opt_size, 0x22)
    opt = bytearray(opt_size)
    opt[:2] = (0x20B).to_bytes(2, "little")
    opt[108:112] = (16).to_bytes(4, "little")
    if signature is not None:
        opt[112 + 32:112 + 40] = struct.pack("<II", pos, len(signature))
    image[e_lfanew + 24:table_at] = opt
    for i, (name, offset, data) in enumerate(layout):
        entry = name.encode().ljust(8, b"\0") + struct.pack(
            "<IIIIIIHHI", len(data), 0x1000 * (i + 1), (len(data) + 511) // 512 * 512, offset,
            0, 0, 0, 0, 0x40000040)
        image[table_at + 40 * i:table_at + 40 * (i + 1)] = entry
        image[offset:offset + len(data)] = data
    return bytes(image) + (signature or b"")


def arm64_image() -> bytes:
    """An arm64 ``Image`` header (Documentation/arch/arm64/booting.rst) and some payload."""
    head = bytearray(64)
    head[0x38:0x3C] = b"ARM\x64"
    return bytes(head) + os.urandom(4096)


def flip_bytes(path: Path, offset: int, count: int = 16) -> None:
    """Invert ``count`` bytes at ``offset`` in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def truncate_to(path: Path, fraction: float) -> None:
    size = path.stat().st_size
    os.truncate(path, int(size * fraction))
