"""bootwatch.linux: the C library's bindings against the real kernel (real files, real mounts,
real processes), and the parsers of /proc/self/mountinfo and /proc/PID/stat."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import wait_for, wait_until

from bootwatch import linux

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")

TMPFS_MAGIC = 0x01021994
PROC_MAGIC = 0x9FA0


def test_the_c_library_is_loaded_once() -> None:
    assert linux.libc() is linux.libc()


def test_the_structures_mirror_the_kernel_headers() -> None:
    # linux/stat.h: struct statx is 256 bytes; the offsets bootwatch reads are the kernel's.
    assert ctypes.sizeof(linux.Statx) == 256
    assert linux.Statx.stx_attributes_mask.offset == 56
    assert linux.Statx.stx_btime.offset == 80
    assert linux.Statx.stx_mnt_id.offset == 144
    assert ctypes.sizeof(linux.StatxTimestamp) == 16
    # glibc's struct statfs: 7 words, fsid_t (two ints), 3 words, 4 spare words.
    assert ctypes.sizeof(linux.StatFs) == 14 * ctypes.sizeof(ctypes.c_long) + 8


def test_statx_says_what_stat_says(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"x" * 1234)
    st = os.stat(path)
    sx = linux.statx(path, 0x7FF)  # STATX_BASIC_STATS
    assert (sx.stx_ino, sx.stx_size, sx.stx_mode, sx.stx_nlink) == (st.st_ino, 1234, st.st_mode, 1)
    assert os.makedev(sx.stx_dev_major, sx.stx_dev_minor) == st.st_dev
    assert sx.stx_mtime.ns() == st.st_mtime_ns


def test_statx_of_an_open_descriptor_and_its_birth_time(tmp_path: Path) -> None:
    before = time.time_ns()
    path = tmp_path / "born"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        sx = linux.statx(b"", linux.STATX_BTIME, dir_fd=fd, flags=linux.AT_EMPTY_PATH)
    finally:
        os.close(fd)
    assert sx.stx_ino == os.stat(path).st_ino
    if sx.stx_mask & linux.STATX_BTIME:  # ext4 with 256-byte inodes, btrfs, xfs, tmpfs
        assert before - 2_000_000_000 <= sx.stx_btime.ns() <= time.time_ns()


def test_statx_of_a_missing_file_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as raised:
        linux.statx(tmp_path / "missing", 0)
    assert raised.value.filename == str(tmp_path / "missing")


def test_renameat2_noreplace_never_replaces(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        linux.renameat2(str(tmp_path / "a"), str(tmp_path / "b"), linux.RENAME_NOREPLACE)
    assert ((tmp_path / "a").read_bytes(), (tmp_path / "b").read_bytes()) == (b"a", b"b")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        linux.renameat2("a", "c", linux.RENAME_NOREPLACE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]


def test_renameat2_exchange_swaps_two_names(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").mkdir()
    linux.renameat2(str(tmp_path / "a"), str(tmp_path / "b"), linux.RENAME_EXCHANGE)
    assert (tmp_path / "a").is_dir() and (tmp_path / "b").read_bytes() == b"a"


def test_syncfs_and_sync_file_range_on_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "data"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 65536)
        linux.sync_file_range(fd, 0, 0, linux.SYNC_FILE_RANGE_WRITE)
        linux.syncfs(fd, tmp_path)
    finally:
        os.close(fd)
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as raised:
        linux.syncfs(r, "closed")
    assert raised.value.errno == errno.EBADF and raised.value.filename == "closed"


def test_filesystem_type_is_the_magic_of_linux_magic_h() -> None:
    fd = os.open("/proc/self/status", os.O_RDONLY)
    try:
        assert linux.filesystem_type(fd) == PROC_MAGIC
    finally:
        os.close(fd)


def test_inode_generation_where_the_filesystem_has_one(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.statvfs(path).f_fsid and linux.filesystem_type(fd) == 0xEF53:  # ext2/3/4 keep one
            assert isinstance(linux.inode_generation(fd), int)
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as raised:
            linux.inode_generation(r)  # a pipe has no inode generation
        assert raised.value.errno == errno.ENOTTY
    finally:
        os.close(r)
        os.close(w)


def test_reflink_fails_where_extents_cannot_be_shared(tmp_path: Path) -> None:
    r, w = os.pipe()
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError):
            linux.reflink(r, dst)
    finally:
        for fd in (r, w, dst):
            os.close(fd)


def test_malloc_trim_runs() -> None:
    linux.malloc_trim()


def test_unescape_mountinfo() -> None:
    assert linux.unescape_mountinfo("/mnt/a\\040b\\011c\\012d\\134e") == "/mnt/a b\tc\nd\\e"
    assert linux.unescape_mountinfo("plain") == "plain"
    assert linux.unescape_mountinfo("\\04") == "\\04"  # not three digits: left as it is


def test_parse_mountinfo_line() -> None:
    line = "36 35 98:0 /mnt1 /mnt\\0402 rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue\n"
    assert linux.parse_mountinfo_line(line) == linux.MountInfo(
        mount_id=36, dev="98:0", root="/mnt1", mount_point="/mnt 2", optional=("master:1", "shared:2"),
        fstype="ext3", source="/dev/root")
    assert linux.parse_mountinfo_line("36 35 98:0 / / rw - tmpfs\n") == linux.MountInfo(
        36, "98:0", "/", "/", (), "tmpfs", "")
    assert linux.parse_mountinfo_line("garbage\n") is None
    assert linux.parse_mountinfo_line("x 35 98:0 / / rw - tmpfs tmpfs rw\n") is None


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "a dir\\with space"
    point.mkdir()
    yield point
    for _ in range(3):
        try:
            linux.umount2(point, linux.MNT_DETACH)
        except OSError:
            break


@needs_root
def test_mount_a_tmpfs_find_it_in_mountinfo_and_take_it_down(mount_point: Path) -> None:
    linux.mount("bootwatch-test", mount_point, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    mine = [m for m in linux.mountinfo() if m.mount_point == str(mount_point)]
    assert len(mine) == 1 and (mine[0].fstype, mine[0].source, mine[0].root) == ("tmpfs", "bootwatch-test", "/")
    sx = linux.statx(mount_point, linux.STATX_MNT_ID)
    if sx.stx_mask & linux.STATX_MNT_ID:  # Linux 5.8
        assert sx.stx_mnt_id == mine[0].mount_id
    if sx.stx_attributes_mask & linux.STATX_ATTR_MOUNT_ROOT:
        assert sx.stx_attributes & linux.STATX_ATTR_MOUNT_ROOT
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert linux.filesystem_type(fd) == TMPFS_MAGIC
    finally:
        os.close(fd)
    linux.mount(None, mount_point, None, linux.MS_PRIVATE)
    linux.umount2(mount_point)
    assert not [m for m in linux.mountinfo() if m.mount_point == str(mount_point)]
    with pytest.raises(OSError) as raised:
        linux.umount2(mount_point)  # no mount point any more
    assert raised.value.errno == errno.EINVAL and raised.value.filename == str(mount_point)


@needs_root
def test_mount_of_an_unknown_type_is_enodev(mount_point: Path) -> None:
    with pytest.raises(OSError) as raised:
        linux.mount("none", mount_point, "no-such-filesystem", linux.MS_RDONLY)
    assert raised.value.errno == errno.ENODEV


def _own_stat_fields(pid: int) -> list[bytes]:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return data[data.rindex(b")") + 2:].split()


def test_proc_stat_of_this_process() -> None:
    info = linux.proc_stat(os.getpid())
    assert info is not None and not info.exited
    assert info.start_time == int(_own_stat_fields(os.getpid())[19])


def test_proc_stat_counts_fields_from_the_last_parenthesis() -> None:
    """A command name may hold spaces and ')': the fields are counted from the last ')'."""
    # A process may rename only itself: the child sets its comm once told to, then says so.
    rename = "import sys, time\nsys.stdin.readline()\nopen('/proc/self/comm', 'w').write('x) 1 2 (Z) 3 4')\n" \
             "print('renamed', flush=True)\ntime.sleep(60)\n"
    child = subprocess.Popen([sys.executable, "-c", rename], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        before = linux.proc_stat(child.pid)
        assert before is not None
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "renamed\n"
        assert f"{child.pid} (x) 1 2 (Z) 3 4) " in Path(f"/proc/{child.pid}/stat").read_text()
        after = linux.proc_stat(child.pid)
        assert after is not None and after.start_time == before.start_time and after.state in ("R", "S")
        child.send_signal(signal.SIGKILL)
        zombie = wait_for(lambda: (lambda s: s if s is not None and s.exited else None)(linux.proc_stat(child.pid)),
                          what="the child to become a zombie")
        assert zombie.start_time == before.start_time
    finally:
        child.kill()
        child.wait()
    assert wait_until(lambda: linux.proc_stat(child.pid) is None)
