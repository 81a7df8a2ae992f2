"""verify.fstree: the walk of a mounted filesystem image, on real ext4 images built with mkfs and
edited with debugfs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("debugfs"), reason="needs root and debugfs"),
]


def test_a_fifo_behind_a_regular_dirent_does_not_hang_the_walk(tmp_path: Path) -> None:
    """The directory entry says "regular file", the inode is a FIFO: the walk must not block on it."""
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(4 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    payload = tmp_path / "payload"
    payload.write_bytes(b"hello\n")
    subprocess.run(["debugfs", "-w", "-R", f"write {payload} file", str(image)], check=True, capture_output=True)
    # Only the inode's mode changes: the directory entry keeps its "regular file" type.
    subprocess.run(["debugfs", "-w", "-R", "sif file mode 010644", str(image)], check=True, capture_output=True)
    runtime = tmp_path / "run"
    code = ("from pathlib import Path; from bootwatch.verify import check_image; "
            f"print(check_image(Path({str(image)!r}), runtime_dir=Path({str(runtime)!r}), timeout=2))")
    # In a child: a hang is then a timeout here, and the mount can still be taken down.
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        for point in (runtime / "mnt").glob("*") if (runtime / "mnt").is_dir() else ():
            subprocess.run(["umount", "-l", str(point)], check=False)
        pytest.fail("check_image hung on a FIFO listed as a regular file")
    assert proc.returncode == 0, err
    assert "outcome=<Outcome.OK" in out, out  # a FIFO has nothing to read: the rest of the image is fine
