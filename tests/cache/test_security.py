"""The cache directory is private, paths never escape the boot directory, files are created safely.

As libguestfs did for its appliance cache: a cache another user can write to, or reach through a
symlink, would let them plant a kernel that bootwatch later restores into /boot.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

K = "/vmlinuz-1"


def nothing_created_in(directory: Path) -> bool:
    return not any(directory.iterdir())


# ------------------------------------------------------------------------------------ the cache directory

@pytest.mark.parametrize("command", [("add", K), ("list",), ("fsck",), ("clean",)])
def test_a_symlinked_cache_directory_is_refused(boot_tree, tmp_path: Path, command) -> None:
    boot_tree.write_file(K)
    real = tmp_path / "real-cache"
    real.mkdir(mode=0o700)
    os.symlink(real, boot_tree.cache)
    rc, out, err = boot_tree.cli(*command)
    line = boot_tree.assert_clean_error(rc, err, names=[str(boot_tree.cache)])
    assert "symlink" in line
    assert nothing_created_in(real)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [0o770, 0o707, 0o720, 0o702])
def test_a_group_or_other_writable_cache_directory_is_refused(boot_tree, mode: int) -> None:
    boot_tree.write_file(K)
    boot_tree.cache.mkdir()
    os.chmod(boot_tree.cache, mode)
    for command in (("add", K), ("list",)):
        rc, out, err = boot_tree.cli(*command)
        line = boot_tree.assert_clean_error(rc, err, names=[str(boot_tree.cache)])
        assert "writable by group or other" in line and f"{mode:04o}" in line
    assert nothing_created_in(boot_tree.cache)


@pytest.mark.slow
def test_a_cache_directory_owned_by_another_user_is_refused(boot_tree, needs_root) -> None:
    boot_tree.write_file(K)
    boot_tree.cache.mkdir(mode=0o700)
    os.chown(boot_tree.cache, 65534, 65534)
    for command in (("add", K), ("list",), ("fsck",)):
        rc, out, err = boot_tree.cli(*command)
        line = boot_tree.assert_clean_error(rc, err, names=[str(boot_tree.cache)])
        assert "owned by uid 65534" in line and "not by the running user" in line
    assert nothing_created_in(boot_tree.cache)


def test_a_new_cache_directory_is_created_private(boot_tree) -> None:
    boot_tree.write_file(K)
    assert boot_tree.cli("add", K)[0] == 0
    st = os.lstat(boot_tree.cache)
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()


# ------------------------------------------------------------------------------------ boot paths

def test_a_boot_symlink_out_of_the_boot_directory_is_not_followed(boot_tree) -> None:
    os.symlink("/etc/passwd", boot_tree.path("/vmlinuz-evil"))
    boot_tree.write_file(K)
    assert boot_tree.cli("add", K)[0] == 0
    before = boot_tree.index_bytes()
    rc, out, err = boot_tree.cli("add", "/vmlinuz-evil")
    line = boot_tree.assert_clean_error(rc, err, names=["/vmlinuz-evil"])
    assert "outside the boot directory" in line
    assert boot_tree.index_bytes() == before
    passwd_id = boot_tree.sha1_of(Path("/etc/passwd"))
    assert passwd_id not in boot_tree.images_on_disk()
    assert boot_tree.temp_files() == []


def test_a_boot_symlink_inside_the_boot_directory_is_followed(boot_tree) -> None:
    image_id = boot_tree.write_file(K)
    os.symlink("vmlinuz-1", boot_tree.path("/vmlinuz"))
    rc, out, err = boot_tree.cli("add", "/vmlinuz")
    assert rc == 0, err
    assert boot_tree.list_json()["/vmlinuz"]["image_id"] == image_id


@pytest.mark.slow
def test_restore_through_a_parent_symlinked_out_of_boot_is_refused(boot_tree, tmp_path: Path) -> None:
    boot_tree.write_file("/sub/vmlinuz-1")
    boot_tree.write_entry("e", linux="/sub/vmlinuz-1")
    assert boot_tree.cli("add", "/sub/vmlinuz-1")[0] == 0
    shutil.rmtree(boot_tree.boot / "sub")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, boot_tree.boot / "sub")
    rc, out, err = boot_tree.cli("restore", "/sub/vmlinuz-1")
    line = boot_tree.assert_clean_error(rc, err, names=["/sub/vmlinuz-1"])
    assert "outside the boot directory" in line
    assert nothing_created_in(outside), "restore wrote through a symlink out of the boot directory"


@pytest.mark.slow
@pytest.mark.parametrize("argument", ["/../etc/passwd", "/sub/../../etc/passwd", "/./vmlinuz-1", "//vmlinuz-1"])
def test_paths_with_dot_components_are_rejected(boot_tree, argument: str) -> None:
    boot_tree.write_file(K)
    for command in ("add", "restore", "remove"):
        rc, out, err = boot_tree.cli(command, argument)
        boot_tree.assert_clean_error(rc, err, expected_rc=2)  # an argument that is no boom path: usage
        assert "'..'" in err or "component" in err or "outside" in err, err
    assert not boot_tree.cache.exists() or boot_tree.images_on_disk() == []


@pytest.mark.slow
def test_an_index_path_with_dotdot_is_rejected_before_anything_is_opened(boot_tree, tmp_path: Path) -> None:
    """A '..' after the first component is no key of any kind: the index is corrupt. (Keys that
    start with /.. are ESP keys: see tests/cache/test_entry_sources.py for hostile ones.)"""
    victim_dir = tmp_path / "etc"
    victim_dir.mkdir()
    image = os.urandom(64)
    image_id = hashlib.sha1(image).hexdigest()
    boot_tree.cache.mkdir(mode=0o700)
    boot_tree.image(image_id).write_bytes(image)
    hostile = "/loader/../../etc/evil"  # relative to boot: <tmp>/etc/evil, outside the boot directory
    boot_tree.index_file.write_text(json.dumps({
        "index": {hostile: [image_id]},
        "paths": {hostile: {"path_mode": 0o100644, "path_uid": 0, "path_gid": 0, "path_attrs": {}}},
        "images": {image_id: {"image_ts": 1}}}))
    for command in (("list",), ("restore", hostile), ("clean",)):
        rc, out, err = boot_tree.cli(*command)
        # The index is corrupt (1); as an argument the path is a usage error (2).
        assert rc == (2 if command[0] == "restore" else 1) and "Traceback" not in err, err
        assert hostile in err
    assert nothing_created_in(victim_dir)


# ------------------------------------------------------------------------------------ file creation

def test_a_planted_lock_symlink_is_not_followed(boot_tree, tmp_path: Path) -> None:
    boot_tree.write_file(K)
    boot_tree.cache.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, boot_tree.cache / ".bootwatch.lock")
    rc, out, err = boot_tree.cli("add", K)
    boot_tree.assert_clean_error(rc, err, names=[".bootwatch.lock"])
    assert victim.read_bytes() == b"precious"
    assert boot_tree.images_on_disk() == []


def test_a_planted_image_symlink_is_replaced_not_written_through(boot_tree, tmp_path: Path) -> None:
    data = os.urandom(5000)
    image_id = boot_tree.write_file(K, content=data)
    boot_tree.cache.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, boot_tree.image(image_id))
    rc, out, err = boot_tree.cli("add", K)
    assert rc == 0, err
    assert victim.read_bytes() == b"precious"
    assert not boot_tree.image(image_id).is_symlink()
    assert boot_tree.image(image_id).read_bytes() == data


@pytest.mark.slow
def test_a_planted_restore_marker_symlink_is_not_followed(boot_tree, tmp_path: Path) -> None:
    boot_tree.write_file(K)
    assert boot_tree.cli("add", K)[0] == 0
    boot_tree.path(K).unlink()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, boot_tree.boot / ".vmlinuz-1.boomrestored")
    rc, out, err = boot_tree.cli("restore", K)
    boot_tree.assert_clean_error(rc, err, names=[".vmlinuz-1.boomrestored"])
    assert victim.read_bytes() == b"precious"
    assert not [p for p in boot_tree.boot.iterdir() if p.name.startswith(".bootwatch-restore.")]


def test_a_planted_index_symlink_is_refused(boot_tree, tmp_path: Path) -> None:
    boot_tree.cache.mkdir(mode=0o700)
    target = tmp_path / "index.json"
    target.write_text(json.dumps({"index": {}, "paths": {}, "images": {}}))
    os.symlink(target, boot_tree.index_file)
    rc, out, err = boot_tree.cli("list")
    line = boot_tree.assert_clean_error(rc, err, names=["cacheindex.json"])
    assert "symlink" in line


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (apt-get install strace)")
def test_temp_files_are_opened_with_o_excl_and_o_nofollow(boot_tree) -> None:
    """Watch the real open(2) calls: every temp file (image, index, restored copy) is O_EXCL|O_NOFOLLOW."""
    boot_tree.write_file(K)
    boot_tree.write_entry("e", linux=K)
    log = boot_tree.root / "strace.log"

    def traced(*args: str) -> None:
        argv = ["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", str(log), sys.executable, "-m",
                "bootwatch", "--boot-dir", str(boot_tree.boot), "--cache-dir", str(boot_tree.cache), *args]
        proc = subprocess.run(argv, env=boot_tree.env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr

    traced("add", K)
    add_log = log.read_text()
    boot_tree.path(K).unlink()
    traced("restore", K)
    restore_log = log.read_text()
    creates = [line for line in (add_log + restore_log).splitlines()
               if re.search(r"\.bootwatch-(tmp|restore)\.", line) and "O_CREAT" in line]
    assert len(creates) >= 3, "expected the image, index and restore temp files:\n" + add_log + restore_log
    for line in creates:
        assert "O_EXCL" in line and "O_NOFOLLOW" in line, line
