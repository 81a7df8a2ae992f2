"""Kernel files that pass for regular ones never make bootwatch hang.

``/proc/kmsg`` is ``S_IFREG`` with size 0, and its read waits for kernel messages (and consumes
them). An entry that was a symlink to it passed the ``S_ISREG`` check; ``open_regular`` then
cleared ``O_NONBLOCK`` and 'list' (and every reference read, the daemon's under the cache lock)
blocked.

What is decided:

- every file is read with ``O_NONBLOCK`` kept set (a regular file's reads ignore it);
- a file of the kernel's own filesystems (procfs, sysfs, debugfs...: ``fstatfs`` magic) is
  refused like a FIFO, wherever bootwatch reads it (entries, boot files, images, the index);
- an entry that is a symlink out of the entries directory's filesystem is no boot entry (a boot
  loader reading that filesystem cannot follow it either): skipped with a warning naming it;
- boot files are already confined to the boot directory (a symlink out of it is refused), and
  not to its filesystem (``/boot/efi`` is another one); a hash reads no further than one chunk
  past the size ``fstat`` gave, so a file whose size lies is refused, never read forever.

Every command runs as a child process with a timeout: a hang fails the test, never the suite.
Reading ``/proc/kmsg`` would consume kernel messages, which the fixed code never does.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bootwatch.cache.hashing import hash_file
from bootwatch.errors import ContentChangedError, NotRegularFileError
from bootwatch.safety import open_regular

TIMEOUT = 20  # seconds; each command takes well under one when it does not hang
kmsg = pytest.mark.skipif(not os.path.exists("/proc/kmsg"), reason="no /proc/kmsg")


def run(tree, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "bootwatch", "--boot-dir", str(tree.boot), "--cache-dir",
                               str(tree.cache), *args], env=tree.env(), capture_output=True,
                              text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"'bootwatch {' '.join(args)}' hangs")


@pytest.mark.slow
@kmsg
def test_an_entry_whose_read_blocks_does_not_hang_list(boot_tree, needs_root) -> None:
    """list does not hang on it: the entry is named in one warning, and the other entries count."""
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_entry("one", linux="/vmlinuz-1.0")
    assert tree.cli("scan")[0] == 0
    os.symlink("/proc/kmsg", tree.entries / "kmsg.conf")
    proc = run(tree, "list")
    assert proc.returncode == 0, proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if "kmsg.conf" in line]
    assert "not a boot entry" in line
    assert "/vmlinuz-1.0" in proc.stdout
    proc = run(tree, "clean", "--dry-run")
    assert proc.returncode == 0, proc.stderr  # references are known: the one real entry


def test_an_entry_on_another_filesystem_is_no_boot_entry(boot_tree, needs_root, tmp_path: Path) -> None:
    """A symlink out of the entries directory's filesystem, to a real file on a tmpfs."""
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_entry("one", linux="/vmlinuz-1.0")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(elsewhere)], check=True)
    try:
        (elsewhere / "two.conf").write_text("title two\nlinux /vmlinuz-2.0\n")
        os.symlink(elsewhere / "two.conf", tree.entries / "two.conf")
        proc = run(tree, "scan")
        assert proc.returncode == 0, proc.stderr
        [line] = [line for line in proc.stderr.splitlines() if "two.conf" in line]
        assert "another filesystem" in line and str(tree.entries) in line
        assert set(tree.read_index()["index"]) == {"/vmlinuz-1.0"}
    finally:
        subprocess.run(["umount", str(elsewhere)], check=True)


def test_an_entry_symlinked_inside_its_filesystem_still_counts(boot_tree) -> None:
    tree = boot_tree
    tree.write_kernel("1.0")
    (tree.boot / "kept.conf").write_text("title one\nlinux /vmlinuz-1.0\n")
    os.symlink(tree.boot / "kept.conf", tree.entries / "one.conf")
    proc = run(tree, "scan")
    assert proc.returncode == 0, proc.stderr
    assert "/vmlinuz-1.0" in tree.read_index()["index"]


@pytest.mark.slow
@kmsg
@pytest.mark.parametrize("target", ["/proc/kmsg", "/dev/zero"])
def test_a_boot_path_symlinked_to_a_kernel_file_does_not_hang(boot_tree, needs_root, target) -> None:
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_entry("one", linux="/vmlinuz-1.0", initrd=["/initrd-2.0"])
    os.symlink(target, tree.path("/initrd-2.0"))
    proc = run(tree, "scan")
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    assert any("/initrd-2.0" in line for line in proc.stderr.splitlines()), proc.stderr
    assert set(tree.read_index()["index"]) == {"/vmlinuz-1.0"}
    proc = run(tree, "add", "/initrd-2.0")
    tree.assert_clean_error(proc.returncode, proc.stderr, names=["/initrd-2.0"])


@pytest.mark.slow
@kmsg
def test_a_boot_file_bind_mounted_from_procfs_is_refused(boot_tree, needs_root) -> None:
    """No symlink to catch: the boot file itself is /proc/kmsg. Refused by its filesystem."""
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_entry("one", linux="/vmlinuz-1.0", initrd=["/initrd-2.0"])
    tree.write_file("/initrd-2.0", content=b"")
    subprocess.run(["mount", "--bind", "/proc/kmsg", str(tree.path("/initrd-2.0"))], check=True)
    try:
        proc = run(tree, "scan")
        assert proc.returncode == 0, proc.stderr
        [line] = [line for line in proc.stderr.splitlines() if "/initrd-2.0" in line]
        assert "procfs" in line
        assert set(tree.read_index()["index"]) == {"/vmlinuz-1.0"}
        proc = run(tree, "add", "/initrd-2.0")
        line = tree.assert_clean_error(proc.returncode, proc.stderr, names=[str(tree.path("/initrd-2.0"))])
        assert "procfs" in line
    finally:
        subprocess.run(["umount", str(tree.path("/initrd-2.0"))], check=True)


def test_files_stay_nonblocking_and_kernel_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"data")
    fd = open_regular(path)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    finally:
        os.close(fd)
    with pytest.raises(NotRegularFileError, match="procfs"):
        open_regular("/proc/self/status")
    with pytest.raises(NotRegularFileError, match="sysfs"):
        open_regular("/sys/kernel/uevent_seqnum")


def test_a_hash_reads_no_further_than_the_size_said(tmp_path: Path) -> None:
    """A file whose size lies (procfs says 0, and holds more) gets a bounded read and is refused."""
    fd = os.open("/proc/self/maps", os.O_RDONLY | os.O_CLOEXEC)  # past open_regular, which refuses it
    try:
        assert os.fstat(fd).st_size == 0
        with pytest.raises(ContentChangedError, match="more data than its size"):
            hash_file(fd, path="/proc/self/maps")
    finally:
        os.close(fd)
