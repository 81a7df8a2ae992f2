"""Images whose bytes are sound but which the kernel cannot boot: an xz initramfs with an
integrity check the kernel's XZ decoder does not take, and files that hold only zero bytes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from imagefactory import cpio_newc, make_tree

from bootwatch.verify import ImageKind, Outcome, check_image


def _xz(data: bytes, check: str) -> bytes:
    return subprocess.run(["xz", "-c", "-0", f"--check={check}"], input=data, capture_output=True,
                          check=True).stdout


def test_an_xz_initramfs_with_crc32_or_no_check_passes(tmp_path: Path) -> None:
    archive = cpio_newc(make_tree(tmp_path / "tree"))
    for check in ("crc32", "none"):
        image = tmp_path / f"initrd-{check}.img"
        image.write_bytes(_xz(archive, check))
        assert check_image(image, runtime_dir=tmp_path).outcome is Outcome.OK, check


def test_an_xz_initramfs_with_crc64_or_sha256_fails(tmp_path: Path) -> None:
    archive = cpio_newc(make_tree(tmp_path / "tree"))
    for check, name in (("crc64", "CRC64"), ("sha256", "SHA-256")):
        image = tmp_path / f"initrd-{check}.img"
        image.write_bytes(_xz(archive, check))
        result = check_image(image, runtime_dir=tmp_path)
        assert (result.kind, result.outcome) == (ImageKind.INITRAMFS, Outcome.FAILED), result
        assert f"integrity check is {name}" in result.message


def test_a_file_of_zero_bytes_fails(tmp_path: Path) -> None:
    image = tmp_path / "vmlinuz"
    image.write_bytes(bytes(3 << 20))
    result = check_image(image, runtime_dir=tmp_path)
    assert result.outcome is Outcome.FAILED
    assert result.message.startswith("holds only zero bytes")


def test_zero_bytes_before_an_initramfs_are_skipped_as_the_kernel_skips_them(tmp_path: Path) -> None:
    image = tmp_path / "initrd.img"
    image.write_bytes(bytes(64 << 10) + cpio_newc(make_tree(tmp_path / "tree")))
    result = check_image(image, runtime_dir=tmp_path)
    assert (result.kind, result.outcome) == (ImageKind.INITRAMFS, Outcome.OK), result
