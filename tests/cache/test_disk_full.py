"""A full disk during add: a clean error, no partial image, the index unchanged.

The cache lives on a 2 MiB tmpfs mounted for the test (``mode=0700``: a tmpfs root is 1777 by
default, which the cache directory check rightly refuses). tmpfs reports ENOSPC as soon as a write
needs a page beyond its size, like a full disk.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs for the cache")]


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "2m") -> Iterator[Path]:
    directory.mkdir(mode=0o700, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
                   check=True, capture_output=True)
    try:
        yield directory
    finally:
        # Always unmount, even when the test failed; lazily if something still holds it open.
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def test_an_image_bigger_than_the_free_space_fails_cleanly(boot_tree) -> None:
    with small_tmpfs(boot_tree.cache):
        small = boot_tree.write_file("/small", 100_000)
        assert boot_tree.cli("add", "/small")[0] == 0
        index_before = boot_tree.index_bytes()
        big_size = free_bytes(boot_tree.cache) + (1 << 20)
        big = boot_tree.write_file("/big", big_size)

        rc, out, err = boot_tree.cli("add", "/big")
        line = boot_tree.assert_clean_error(rc, err, names=[str(boot_tree.cache)])
        assert "no space left on device" in line
        assert boot_tree.images_on_disk() == [small], "a partial image was left behind"
        assert big not in boot_tree.images_on_disk()
        assert boot_tree.temp_files() == [], "the temp file was left behind"
        assert boot_tree.index_bytes() == index_before
        # The space is given back and the cache still works.
        assert free_bytes(boot_tree.cache) >= big_size - (1 << 20)
        assert boot_tree.cli("fsck")[0] == 0
        assert list(boot_tree.list_json()) == ["/small"]


def test_a_full_disk_while_writing_the_index_leaves_the_old_index(boot_tree) -> None:
    """The image fits exactly, the new index does not: the old index stays, the image is a whole orphan."""
    with small_tmpfs(boot_tree.cache):
        boot_tree.write_file("/small", 100_000)
        assert boot_tree.cli("add", "/small")[0] == 0
        index_before = boot_tree.index_bytes()
        exact = boot_tree.write_file("/exact", free_bytes(boot_tree.cache))

        rc, out, err = boot_tree.cli("add", "/exact")
        line = boot_tree.assert_clean_error(rc, err, names=[str(boot_tree.index_file)])
        assert "no space left on device" in line
        assert boot_tree.index_bytes() == index_before
        assert boot_tree.temp_files() == []
        for image_id in boot_tree.images_on_disk():
            assert boot_tree.sha1_of(boot_tree.image(image_id)) == image_id, "an image is truncated"
        # At worst a complete, unlisted image is left: a warning for fsck, and clean removes it.
        rc, out, err = boot_tree.cli("fsck")
        assert rc == 0, out + err
        boot_tree.write_entry("e", linux="/small")
        assert boot_tree.cli("clean")[0] == 0
        assert exact not in boot_tree.images_on_disk()
        assert list(boot_tree.list_json()) == ["/small"]
