"""check_image on flattened devicetrees: QEMU's own blobs (package qemu-system-data), whole and damaged."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from bootwatch.verify import ImageKind, Outcome, check_image

QEMU_DTBS = sorted(Path("/usr/share/qemu").glob("*.dtb"))


@pytest.fixture
def dtb() -> bytes:
    if not QEMU_DTBS:
        pytest.skip("no devicetree of QEMU's (package qemu-system-data)")
    return QEMU_DTBS[0].read_bytes()


def check(tmp_path: Path, data: bytes):
    path = tmp_path / "board.dtb"
    path.write_bytes(data)
    return check_image(path, runtime_dir=tmp_path / "run")


def test_a_whole_devicetree_is_ok(tmp_path: Path, dtb: bytes) -> None:
    result = check(tmp_path, dtb)
    assert (result.kind, result.outcome) == (ImageKind.DEVICETREE, Outcome.OK), result
    assert result.message == f"devicetree: version {struct.unpack_from('>I', dtb, 20)[0]}, {len(dtb)} bytes"


def test_a_truncated_devicetree_fails(tmp_path: Path, dtb: bytes) -> None:
    result = check(tmp_path, dtb[:len(dtb) // 2])
    assert (result.kind, result.outcome) == (ImageKind.DEVICETREE, Outcome.FAILED), result
    assert result.message == f"devicetree truncated: its header states {len(dtb)} bytes, the file has {len(dtb) // 2}"
    assert check(tmp_path, dtb[:20]).message == "devicetree truncated: 20 bytes, shorter than its 40-byte header"


def test_a_block_outside_the_blob_fails(tmp_path: Path, dtb: bytes) -> None:
    broken = bytearray(dtb)
    struct.pack_into(">I", broken, 12, len(dtb) + 4096)  # off_dt_strings past the end
    result = check(tmp_path, bytes(broken))
    assert result.outcome is Outcome.FAILED and "a block lies outside" in result.message, result
