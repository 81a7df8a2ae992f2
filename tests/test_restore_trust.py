"""What a restore may write into the boot directory, and which boot files bootwatch may delete again.

- A restored file never gets setuid, setgid or sticky bits, nor group or other write, and only
  root or the owner of its directory as owner, whatever the (untrusted) index records.
- A restored file gets its own path's mtime, even when another path shares its image.
- A ``.boomrestored`` marker makes a boot file "bootwatch's restored copy" only while the file is
  the very inode bootwatch wrote, unchanged since: a file that a package manager put there again
  (by rename, with the same content) is the package's, and is never deleted.

Everything runs on real files, with the real CLI and daemon as child processes.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from daemonproc import DaemonProcess, write_config
from polling import wait_for

BootTree = Any  # conftest.BootTree

K = "/vmlinuz-1"


def edit_index(tree: BootTree, edit) -> None:
    """Rewrite the cache's index by hand (as an attacker or another tool would), by rename."""
    data = tree.read_index()
    edit(data)
    tmp = tree.cache / "edited.json"
    tmp.write_text(json.dumps(data))
    os.rename(tmp, tree.index_file)


def hostile_meta(data: dict) -> None:
    data["paths"][K].update({"path_mode": 0o106777, "path_uid": 4242, "path_gid": 4343})


# ------------------------------------------------------------------------------------ mode and owner

def test_cli_restore_refuses_setuid_and_foreign_owner_from_a_hostile_index(boot_tree: BootTree, needs_root) -> None:
    boot_tree.write_file(K, 5000, mode=0o644)
    boot_tree.write_entry("one", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    edit_index(boot_tree, hostile_meta)
    content = boot_tree.path(K).read_bytes()
    boot_tree.path(K).unlink()

    rc, out, err = boot_tree.cli("restore", K)
    assert rc == 0, err
    assert "Traceback" not in err
    st = os.lstat(boot_tree.path(K))
    assert boot_tree.path(K).read_bytes() == content
    assert stat.S_IMODE(st.st_mode) == 0o755, oct(st.st_mode)
    assert (st.st_uid, st.st_gid) == (0, 0)
    # One line says what was not applied, naming the file.
    assert "vmlinuz-1: restored with mode 0755 and owner 0:0 instead of the recorded mode 6777" in err, err


def test_the_directory_owner_is_an_acceptable_owner(boot_tree: BootTree, needs_root) -> None:
    """Whoever owns the directory can replace the file anyway: the recorded owner is kept."""
    sub = boot_tree.boot / "user"
    sub.mkdir()
    os.chown(sub, 1234, 5678)
    path = "/user/vmlinuz-2"
    boot_tree.write_file(path, 3000, mode=0o640)
    os.chown(boot_tree.path(path), 1234, 5678)
    boot_tree.write_entry("two", linux=path)
    assert boot_tree.cli("add", path)[0] == 0
    boot_tree.path(path).unlink()
    rc, out, err = boot_tree.cli("restore", path)
    assert rc == 0, err
    st = os.lstat(boot_tree.path(path))
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert "instead of the recorded" not in err, err


def test_daemon_restore_refuses_setuid_and_foreign_owner_from_a_hostile_index(boot_tree: BootTree,
                                                                            needs_root) -> None:
    boot_tree.write_file(K, 5000, mode=0o644)
    boot_tree.write_entry("one", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    edit_index(boot_tree, hostile_meta)
    boot_tree.path(K).unlink()
    config = write_config(boot_tree.root / "daemon.toml", boot_tree.boot, boot_tree.cache, boot_tree.root / "run",
                          watch={"settle": "150ms"})
    with DaemonProcess(config, boot_tree.root) as daemon:
        daemon.wait_ready()  # the first reconcile restored it
        st = os.lstat(boot_tree.path(K))
        assert stat.S_IMODE(st.st_mode) == 0o755, oct(st.st_mode)
        assert (st.st_uid, st.st_gid) == (0, 0)
        wait_for(lambda: "RESTORE_ATTRIBUTES_REFUSED" in daemon.output(), what="the refusal logged")
        # And once more while it runs: removed again, restored again, still safe.
        boot_tree.path(K).unlink()
        wait_for(lambda: daemon.output().count("IMAGE_RESTORED") >= 2, what="the second restore")
        st = os.lstat(boot_tree.path(K))
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0)


# ------------------------------------------------------------------------------------ mtime

def test_two_paths_sharing_an_image_each_get_their_own_mtime(boot_tree: BootTree) -> None:
    content = os.urandom(6000)
    boot_tree.write_file("/vmlinuz-a", content=content, mtime=1_600_000_000)
    boot_tree.write_file("/vmlinuz-b", content=content, mtime=1_700_000_000)
    boot_tree.write_entry("ab", linux="/vmlinuz-a", initrd=["/vmlinuz-b"])
    assert boot_tree.cli("add", "/vmlinuz-a")[0] == 0
    assert boot_tree.cli("add", "/vmlinuz-b")[0] == 0
    assert len(boot_tree.images_on_disk()) == 1
    boot_tree.path("/vmlinuz-a").unlink()
    boot_tree.path("/vmlinuz-b").unlink()
    rc, out, err = boot_tree.cli("restore", "/vmlinuz-a", "/vmlinuz-b")
    assert rc == 0, err
    assert os.stat(boot_tree.path("/vmlinuz-a")).st_mtime == 1_600_000_000
    assert os.stat(boot_tree.path("/vmlinuz-b")).st_mtime == 1_700_000_000
