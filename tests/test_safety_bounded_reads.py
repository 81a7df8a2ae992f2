"""Every file bootwatch reads whole has a size bound.

A huge sparse file costs nothing to make, and under a name bootwatch reads whole (the index, four
times with its retries; a derived file; status.json; the configuration) it was read into memory:
'list' on a 3 GiB sparse .bootwatch-references ran past 20 s at 3.7 GB RSS, and under an
address-space limit the command died with "internal error". Now the bound is checked on the
fstat of the opened descriptor before reading, and again while reading (a file can grow).

What is decided: an index over the bound (64 MiB) is corrupt, the usual refusal naming it, never
an empty cache, and 'fsck --repair' keeps it by a hard link (nothing read) and rebuilds; a derived
file or status.json over its bound is ignored as a torn one is, with one line naming it; a
configuration file over 1 MiB is a configuration error (exit 78).

The commands run as child processes with an address-space limit and a timeout: a read of the
whole file fails the test instead of taking the machine's memory.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

HUGE = 4 << 30  # sparse: no space used
TIMEOUT = 120


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))  # 1.5 GiB: far less than HUGE


def run_limited(tree, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bootwatch", "--boot-dir", str(tree.boot), "--cache-dir",
                           str(tree.cache), *args], env=tree.env(env), capture_output=True,
                          text=True, timeout=TIMEOUT, preexec_fn=_limited)


def make_huge(path: Path) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    with open(path, "wb") as f:
        f.truncate(HUGE)


def scanned(tree) -> dict:
    hashes = tree.write_kernel("1.0")
    tree.write_entry("one", linux="/vmlinuz-1.0", initrd=["/initramfs-1.0.img"])
    assert tree.cli("scan")[0] == 0
    return hashes


@pytest.mark.slow
@pytest.mark.parametrize("name,command", [(".bootwatch-references", "list"), (".bootwatch-signatures", "scan"),
                                          ("cacheindex.json", "list")])
def test_a_huge_sparse_file_is_refused_with_one_line(boot_tree, name, command) -> None:
    """No "internal error", no traceback, and the line names the file."""
    boot_tree.config.write_text('[cache]\ntrack = "all"\n')  # scan reads the signatures first
    scanned(boot_tree)
    make_huge(boot_tree.cache / name)
    proc = run_limited(boot_tree, command)
    assert proc.returncode in (0, 1), proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    if name == "cacheindex.json":
        line = boot_tree.assert_clean_error(proc.returncode, proc.stderr, names=[str(boot_tree.cache / name)])
        assert "larger than 64 MiB" in line
    else:  # derived: ignored, said once
        assert proc.returncode == 0, proc.stderr
        [line] = [line for line in proc.stderr.splitlines() if name in line]
        assert "larger than 64 MiB" in line and "ignored" in line


@pytest.mark.slow
def test_a_huge_index_is_corrupt_not_empty(boot_tree) -> None:
    """Unknown is not none: clean, scan and the daemon's passes refuse, and nothing is deleted."""
    scanned(boot_tree)
    images = boot_tree.images_on_disk()
    boot_tree.remove_entry("one")
    make_huge(boot_tree.index_file)
    for command in ("clean", "scan"):
        proc = run_limited(boot_tree, command)
        boot_tree.assert_clean_error(proc.returncode, proc.stderr, names=[str(boot_tree.index_file)])
    assert boot_tree.images_on_disk() == images
    assert boot_tree.index_file.stat().st_size == HUGE


@pytest.mark.slow
def test_fsck_repair_keeps_a_huge_index_by_a_link_and_rebuilds(boot_tree) -> None:
    """The refusal's hint, 'fsck --repair', works: the index is kept as it is (a hard link, read by
    nobody) and the rebuilt one replaces it by rename."""
    hashes = scanned(boot_tree)
    make_huge(boot_tree.index_file)
    inode = boot_tree.index_file.stat().st_ino
    proc = run_limited(boot_tree, "fsck", "--repair")
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    [copy] = boot_tree.cache.glob("cacheindex.json.corrupt-*")
    assert copy.stat().st_ino == inode and copy.stat().st_size == HUGE
    index = boot_tree.read_index()["index"]
    assert {path: ids[-1] for path, ids in index.items()} == hashes
    assert boot_tree.cli("list")[0] == 0


def test_a_huge_status_file_says_not_running(boot_tree, tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    make_huge(runtime / "status.json")
    boot_tree.config.write_text(f'[paths]\nruntime = "{runtime}"\n')
    proc = run_limited(boot_tree, "status")
    assert proc.returncode == 3, proc.stderr  # LSB: not running
    assert "not running" in proc.stdout
    # No daemon holds the lock, so the file is not read at all (test_status.py: with a daemon
    # running, the status says so and names the file as larger than its bound).
    assert not proc.stderr, proc.stderr


def test_a_huge_configuration_file_is_a_configuration_error(boot_tree, tmp_path: Path) -> None:
    config = tmp_path / "huge.toml"
    make_huge(config)
    proc = run_limited(boot_tree, "list", env={"BOOTWATCH_CONFIG": str(config)})
    line = boot_tree.assert_clean_error(proc.returncode, proc.stderr, expected_rc=78, names=[str(config)])
    assert "larger than 1 MiB" in line


def test_a_file_that_grows_after_the_check_is_refused_while_reading(tmp_path: Path) -> None:
    """The bound holds for what is read, not only for what fstat said when the file was opened."""
    from bootwatch.errors import FileTooLargeError
    from bootwatch.safety import open_regular, read_bounded
    path = tmp_path / "growing"
    path.write_bytes(b"x" * 100)
    fd = open_regular(path, max_size=1000)  # passes: 100 bytes
    try:
        with open(path, "ab") as f:
            f.write(b"y" * 5000)
        with pytest.raises(FileTooLargeError) as caught:
            read_bounded(fd, 1000, path)
        assert str(path) in str(caught.value)
        assert os.lseek(fd, 0, os.SEEK_CUR) <= 1001, "read past the bound"
    finally:
        os.close(fd)


def test_entries_and_status_below_their_bounds_read_as_before(boot_tree, tmp_path: Path) -> None:
    """The bounds refuse nothing real: a status file and an entry of ordinary size."""
    scanned(boot_tree)
    runtime = tmp_path / "run"
    runtime.mkdir()
    (runtime / "status.json").write_text(json.dumps({"pid": os.getpid(), "started": 1_700_000_000,
                                                    "boot_dir": "/boot", "cache_dir": "/var/cache/bootwatch"}))
    from bootwatch.daemon.status import load_status
    assert load_status(runtime).pid == os.getpid()
    assert set(boot_tree.list_json()) == {"/vmlinuz-1.0", "/initramfs-1.0.img"}
