"""``bootwatch restore --image ID PATH``: one of a path's cached images put back in place of the
file there (a kernel or initramfs written broken), and what it refuses.

Real files and the real command line as a child process; the unmounted boot partition is a real
tmpfs bind-mounted on the boot directory and really unmounted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BootTree = Any  # conftest.BootTree

K, INITRD = "/vmlinuz-1.0", "/initramfs-1.0.img"


def two_images(tree: BootTree, path: str = INITRD) -> tuple[str, str]:
    """``path`` cached twice (an older good image, then the one there now); the two ids."""
    tree.write_kernel("1.0")
    tree.write_entry("one", linux=K, initrd=[INITRD])
    good = tree.write_file(path, 6000, mode=0o640)
    assert tree.cli("scan")[0] == 0
    broken = tree.write_file(path, 3000, mode=0o640)
    assert tree.cli("scan")[0] == 0
    return good, broken


def test_an_older_image_is_put_back_over_the_file_there(boot_tree: BootTree) -> None:
    tree = boot_tree
    good, broken = two_images(tree)
    assert tree.list_json()[INITRD]["image_id"] == broken
    inode_before = os.stat(tree.path(INITRD)).st_ino

    rc, out, err = tree.cli("restore", "--image", good, INITRD)
    assert rc == 0, out + err
    assert f"restored image {good}" in out
    assert tree.sha1_of(tree.path(INITRD)) == good
    st = os.stat(tree.path(INITRD))
    assert st.st_ino != inode_before, "written in place instead of by rename of a new file"
    assert stat.S_IMODE(st.st_mode) == 0o640, "not the recorded mode"
    assert not [p for p in tree.boot.iterdir() if p.name.startswith(".bootwatch-restore.")]
    row = tree.list_json()[INITRD]
    assert row["image_id"] == good, "the image put back is not the path's newest"
    assert row["state"] == "RESTORED" and not row["boot_changed"]
    assert row["images"] == [good, broken]

    # The next pass finds the boot file unchanged: nothing to cache, no new image.
    index = tree.index_bytes()
    report = tree.cli_json("scan", "--json")
    assert report["hashed"] == 0 and not report["changed"], report
    assert tree.index_bytes() == index


def test_a_unique_prefix_names_the_image(boot_tree: BootTree) -> None:
    tree = boot_tree
    good, _ = two_images(tree)
    rc, out, err = tree.cli("restore", "--image", good[:8], INITRD)
    assert rc == 0, out + err
    assert tree.sha1_of(tree.path(INITRD)) == good


def test_an_image_of_another_path_is_refused(boot_tree: BootTree) -> None:
    tree = boot_tree
    two_images(tree)
    kernel_image = tree.list_json()[K]["image_id"]
    before = tree.path(INITRD).read_bytes()
    rc, out, err = tree.cli("restore", "--image", kernel_image, INITRD)
    line = tree.assert_clean_error(rc, err, names=[INITRD])
    assert K in line and "not one of its images" in line
    assert tree.path(INITRD).read_bytes() == before


def test_an_unknown_image_is_refused(boot_tree: BootTree) -> None:
    tree = boot_tree
    _, broken = two_images(tree)
    rc, out, err = tree.cli("restore", "--image", "0" * 40, INITRD)
    line = tree.assert_clean_error(rc, err, names=[INITRD])
    assert "has no image" in line and broken in err  # the hint lists its images


def test_an_uncached_path_is_refused(boot_tree: BootTree) -> None:
    tree = boot_tree
    good, _ = two_images(tree)
    tree.write_file("/vmlinuz-2.0", 100)
    rc, out, err = tree.cli("restore", "--image", good, "/vmlinuz-2.0")
    tree.assert_clean_error(rc, err, names=["/vmlinuz-2.0"])
    assert "not cached" in err


@pytest.mark.parametrize("args", [("--image", "xyz12345", INITRD), ("--image", "abc", INITRD),
                                  ("--image", "A" * 40, INITRD), ("--image", "0" * 40, INITRD, K)])
def test_usage_errors(boot_tree: BootTree, args: tuple[str, ...]) -> None:
    tree = boot_tree
    two_images(tree)
    rc, out, err = tree.cli("restore", *args)
    assert rc == 2, out + err
    assert "Traceback" not in err


def test_a_symlink_at_the_name_is_not_replaced(boot_tree: BootTree) -> None:
    tree = boot_tree
    good, _ = two_images(tree)
    target = tree.path(INITRD).with_name("initramfs-real.img")
    os.rename(tree.path(INITRD), target)
    os.symlink(target.name, tree.path(INITRD))
    rc, out, err = tree.cli("restore", "--image", good, INITRD)
    tree.assert_clean_error(rc, err, names=[str(tree.path(INITRD))])
    assert "symlink" in err
    assert os.path.islink(tree.path(INITRD))


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def umount(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=True, capture_output=True)


@pytest.fixture
def partition(boot_tree: BootTree, needs_root: None) -> Iterator[Path]:
    """A tmpfs standing for the boot partition, bind-mounted on the (empty) boot directory."""
    part = boot_tree.root / "partition"
    part.mkdir()
    mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(part))
    try:
        shutil.move(str(boot_tree.boot / "loader"), str(part / "loader"))
        mount("--bind", str(part), str(boot_tree.boot))
        try:
            yield part
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                umount(boot_tree.boot)
    finally:
        umount(part)


@pytest.mark.slow
def test_refused_while_the_boot_partition_is_not_mounted(boot_tree: BootTree, partition: Path) -> None:
    tree = boot_tree
    good, _ = two_images(tree)
    umount(tree.boot)  # the boot directory is now the empty mount point of the root filesystem
    tree.entries.mkdir(parents=True)  # with an entries directory of its own, readable and empty
    index = tree.index_bytes()
    rc, out, err = tree.cli("restore", "--image", good, INITRD)
    tree.assert_clean_error(rc, err)
    assert "mount the boot partition" in err
    assert not tree.path(INITRD).exists(), "written onto the root filesystem's empty mount point"
    assert tree.index_bytes() == index
    shutil.rmtree(tree.boot / "loader")

    mount("--bind", str(partition), str(tree.boot))
    rc, out, err = tree.cli("restore", "--image", good, INITRD)
    assert rc == 0, out + err
    assert tree.sha1_of(tree.path(INITRD)) == good


# ------------------------------------------------------------------------------------ the trim rule

def truncated_bzimage(size: int = 8192) -> bytes:
    """An x86 bzImage whose setup header announces far more than the file holds (a kernel cut off
    by a full /boot): its format check fails."""
    data = bytearray(os.urandom(size))
    data[0x1F1] = 4  # setup sectors
    data[0x1F4:0x1F8] = (1 << 20).to_bytes(4, "little")  # syssize: 16 MiB of protected-mode code
    data[0x1FE:0x200] = b"\x55\xaa"
    data[0x202:0x206] = b"HdrS"
    data[0x206:0x208] = (0x020F).to_bytes(2, "little")
    data[0x20E:0x210] = b"\0\0"
    return bytes(data)


def test_the_newest_image_that_passed_its_check_is_never_trimmed(boot_tree: BootTree) -> None:
    tree = boot_tree
    tree.set_keep(1)
    tree.write_entry("one", linux=K)
    good = tree.write_file(K, 5000)
    assert tree.cli("add", K)[0] == 0
    assert tree.cli("verify", K)[0] == 0  # passed its check
    broken = tree.write_file(K, content=truncated_bzimage())
    assert tree.cli("add", K)[0] == 0  # keep = 1, but the new image has passed no check yet
    assert set(tree.read_index()["index"][K]) == {good, broken}
    assert tree.cli("verify", K)[0] == 1  # the new one fails its check
    for _ in range(2):
        rc, out, err = tree.cli("clean")
        assert rc == 0, out + err
        assert set(tree.read_index()["index"][K]) == {good, broken}, "the previous good image was trimmed"
        assert tree.image(good).exists()

    # Once a newer image passed its check, the older one is trimmed to keep as usual.
    newer = tree.write_file(K, 5000)
    assert tree.cli("add", K)[0] == 0
    assert tree.cli("verify", K)[0] == 0
    assert tree.cli("clean")[0] == 0
    assert tree.read_index()["index"][K] == [newer]
    assert tree.images_on_disk() == [newer]


def test_a_missing_path_is_restored_from_its_newest_image_that_passed_its_check(boot_tree: BootTree,
                                                                               tmp_path: Path) -> None:
    """An initramfs written broken (cut short), then removed: the restore puts back the older
    image that passed its check, not the broken newest one, which would not boot."""
    import gzip

    from imagefactory import cpio_newc, make_tree
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_entry("one", linux=K, initrd=[INITRD])
    image = gzip.compress(cpio_newc(make_tree(tmp_path / "tree")))
    tree.path(INITRD).write_bytes(image)
    assert tree.cli("scan")[0] == 0
    good = tree.list_json()[INITRD]["image_id"]
    tree.path(INITRD).write_bytes(image[:len(image) // 2])  # what a full /boot leaves
    tree.cli("scan")
    row = tree.list_json()[INITRD]
    assert row["image_id"] != good and good in row["images"], row
    tree.path(INITRD).unlink()

    rc, out, err = tree.cli("restore", INITRD)
    assert rc == 0, out + err
    assert tree.sha1_of(tree.path(INITRD)) == good
    assert tree.list_json()[INITRD]["image_id"] == good, "the image put back is not the path's newest"
