"""An initramfs whose compressed stream ends in zero bytes: the zero-filled tail a crash (or a
preallocated file never fully written) leaves, the file's size unchanged."""

from __future__ import annotations

from pathlib import Path

import imagefactory
import pytest

from bootwatch.verify import check_image

MiB = 1 << 20


def _read_syscalls() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("syscr:"))


@pytest.mark.skipif(not imagefactory.have("zstd", "cpio"), reason="needs zstd and cpio")
def test_a_zstd_stream_with_a_zero_tail_fails_reading_it_in_chunks(tmp_path: Path) -> None:
    """zstd reads three zero bytes as an empty block that is not the last: the end of the frame
    is looked for across the whole zero run, which is read a chunk at a time, not a block
    header (three bytes) per read."""
    image = imagefactory.build_initramfs(tmp_path / "initrd.img", tmp_path / "work", ("zstd",), microcode=False)
    data = image.read_bytes()
    image.write_bytes(data[:len(data) // 2] + bytes(4 * MiB))
    before = _read_syscalls()
    result = check_image(image, runtime_dir=tmp_path / "run")
    reads = _read_syscalls() - before
    assert (result.kind, result.outcome) == ("initramfs", "failed"), result
    assert "zstd archive at offset 0: corrupt data" in result.message, result
    assert reads < 1000, f"{reads} reads for a 4 MiB image"
