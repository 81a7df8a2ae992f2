"""The compressed kernel inside a bzImage is decompressed and counted, as the boot's decompressor
would: a payload corrupted in place (the file's size, and so the setup header's check, unchanged)
fails the check, with every compression a kernel build uses. (lz4 has no checksum: a corruption
shows when it breaks the stream or its length, as it does in compressed code.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from imagefactory import bzimage_with_payload

from bootwatch.verify import ImageKind, Outcome, check_image

METHODS = ["gzip", "xz", "lzma", "bzip2", "lz4", "zstd"]


def _tool(method: str) -> None:
    tool = {"lz4": "lz4", "zstd": "zstd", "bzip2": "bzip2", "lzma": "xz", "xz": "xz", "gzip": "gzip"}[method]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


def _check(tmp_path: Path, data: bytes) -> tuple[Outcome, str]:
    image = tmp_path / "vmlinuz"
    image.write_bytes(data)
    result = check_image(image, runtime_dir=tmp_path)
    assert result.kind is ImageKind.KERNEL
    return result.outcome, result.message


@pytest.mark.parametrize("method", METHODS)
def test_a_sound_payload_passes(tmp_path: Path, method: str) -> None:
    _tool(method)
    assert _check(tmp_path, bzimage_with_payload(method))[0] is Outcome.OK


@pytest.mark.parametrize("method", METHODS)
def test_a_payload_corrupted_in_place_fails(tmp_path: Path, method: str) -> None:
    _tool(method)
    data = bytearray(bzimage_with_payload(method))
    start = 1024 + 512
    length = int.from_bytes(data[0x24C:0x250], "little")
    middle = start + length // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    outcome, message = _check(tmp_path, bytes(data))
    assert outcome is Outcome.FAILED
    assert message.startswith("corrupt kernel:"), message


@pytest.mark.parametrize("method", METHODS)
def test_a_payload_of_another_size_than_recorded_fails(tmp_path: Path, method: str) -> None:
    _tool(method)
    outcome, message = _check(tmp_path, bzimage_with_payload(method, recorded=12345))
    assert outcome is Outcome.FAILED
    # gzip's trailer is the size: another one there is a failed length check of the stream itself.
    assert "its build recorded 12345" in message or (method == "gzip" and "incorrect length check" in message)


def test_a_payload_that_is_no_elf_image_fails(tmp_path: Path) -> None:
    outcome, message = _check(tmp_path, bzimage_with_payload("gzip", kernel=b"MZ" + bytes(5000)))
    assert outcome is Outcome.FAILED
    assert "does not decompress to an ELF image" in message
