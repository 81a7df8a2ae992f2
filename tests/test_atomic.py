"""bootwatch.atomic: the one atomic write, on real files: a reader sees the old or the new content,
never a torn one, even when the writer is killed; nothing already at a name is ever opened."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootwatch import linux
from bootwatch.atomic import TempFile, create_exclusive, write_all, write_atomically

REPO_ROOT = Path(__file__).resolve().parent.parent
SIZE = 4 << 20  # large enough that a write and its fsync take a while


def test_write_all_at_an_offset_leaves_the_file_offset(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        write_all(fd, b"head")
        write_all(fd, memoryview(b"0123456789")[2:], offset=100)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 4
    finally:
        os.close(fd)
    data = (tmp_path / "f").read_bytes()
    assert data[:4] == b"head" and data[100:] == b"23456789" and len(data) == 108


def test_write_all_never_stops_silently_at_a_short_write(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes write(2) write only up to the limit and return that short count: the
    loop writes on, and the next write's EFBIG is raised, never a quietly truncated file."""
    code = ("import os, resource, signal, sys\nfrom bootwatch.atomic import write_all\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000))\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)\n"
            "try:\n    write_all(fd, b'x' * 1000000)\nexcept OSError as e:\n    print(e.errno)\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f")], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.strip() == str(errno.EFBIG), result.stderr
    assert os.path.getsize(tmp_path / "f") == 100000


def test_write_atomically_replaces_with_the_mode_asked_for_whatever_the_umask(tmp_path: Path) -> None:
    final = tmp_path / "status.json"
    final.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        write_atomically(final, b"new", mode=0o644, prefix=".status.")
    finally:
        os.umask(old_umask)
    assert final.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(final).st_mode) == 0o644
    assert os.listdir(tmp_path) == ["status.json"]


def test_write_atomically_relative_to_descriptors_and_not_durable(tmp_path: Path) -> None:
    (tmp_path / "temp").mkdir()
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    temp_fd = os.open(tmp_path / "temp", os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_atomically(tmp_path / "derived", b"data", mode=0o600, prefix=".t.", durable=False,
                         final_dir_fd=dir_fd, temp_dir=tmp_path / "temp", temp_dir_fd=temp_fd)
    finally:
        os.close(dir_fd)
        os.close(temp_fd)
    assert (tmp_path / "derived").read_bytes() == b"data"
    assert os.listdir(tmp_path / "temp") == []


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    """A full filesystem (a real 64 KiB tmpfs): ENOSPC, the old content stays, the temp file goes."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    linux.mount("tmpfs", small, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "size=64k")
    try:
        os.chmod(small, 0o755)
        final = small / "index"
        write_atomically(final, b"old", mode=0o644, prefix=".tmp.")
        with pytest.raises(OSError) as raised:
            write_atomically(final, b"x" * (1 << 20), mode=0o644, prefix=".tmp.")
        assert raised.value.errno == errno.ENOSPC
        assert final.read_bytes() == b"old"
        assert os.listdir(small) == ["index"]
    finally:
        linux.umount2(small, linux.MNT_DETACH)


def test_create_exclusive_refuses_a_symlink_planted_at_the_name(tmp_path: Path) -> None:
    """O_CREAT without O_EXCL would follow a dangling symlink and create its target (anywhere the
    planter chose); O_EXCL | O_NOFOLLOW refuse the name, and neither target is created or written."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / ".tmp.1").symlink_to(victim)
    (tmp_path / ".tmp.2").symlink_to(tmp_path / "would-be-created")
    for name in (".tmp.1", ".tmp.2"):
        with pytest.raises(FileExistsError):
            create_exclusive(tmp_path / name)
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "would-be-created").exists()


def test_a_fifo_at_a_temp_name_or_at_the_destination_is_never_opened(tmp_path: Path) -> None:
    """Opening a FIFO for writing blocks until a reader comes: neither name may be opened. The test
    runs in a child with a deadline, so a regression fails instead of hanging the suite."""
    os.mkfifo(tmp_path / ".tmp.fifo")
    os.mkfifo(tmp_path / "final")
    code = (
        "import sys\nfrom pathlib import Path\nfrom bootwatch.atomic import create_exclusive, write_atomically\n"
        "d = Path(sys.argv[1])\n"
        "try:\n    create_exclusive(d / '.tmp.fifo')\nexcept FileExistsError:\n    print('refused')\n"
        "write_atomically(d / 'final', b'content', mode=0o644, prefix='.tmp.')\nprint('written')\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.split() == ["refused", "written"], result.stderr
    assert stat.S_ISREG(os.lstat(tmp_path / "final").st_mode)
    assert (tmp_path / "final").read_bytes() == b"content"
    assert stat.S_ISFIFO(os.lstat(tmp_path / ".tmp.fifo").st_mode)


def test_temp_file_removed_without_commit_and_kept_by_link_without_replace(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), TempFile(tmp_path, ".t.") as tmp:
        write_all(tmp.fd, b"half")
        raise RuntimeError("interrupted")
    (tmp_path / "final").write_bytes(b"theirs")
    with pytest.raises(FileExistsError), TempFile(tmp_path, ".t.") as tmp:
        write_all(tmp.fd, b"ours")
        tmp.commit(tmp_path / "final", replace=False)
    assert os.listdir(tmp_path) == ["final"] and (tmp_path / "final").read_bytes() == b"theirs"


WRITER = """
import sys
from pathlib import Path
from bootwatch.atomic import write_atomically
final, size = Path(sys.argv[1]), int(sys.argv[2])
n = 0
print("ready", flush=True)
while True:
    n += 1
    write_atomically(final, bytes([n % 2]) * size + b"%d" % (n % 2), mode=0o644, prefix=".tmp.")
"""


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    final = tmp_path / "final"
    final.write_bytes(bytes([1]) * SIZE + b"1")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(final), str(SIZE)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait()


def _whole(data: bytes) -> bool:
    """One complete version: SIZE bytes all 0 or all 1, then that digit as its last byte."""
    return len(data) == SIZE + 1 and data[-1:] in (b"0", b"1") and data[:-1] == bytes([data[-1] - 48]) * SIZE


@pytest.mark.slow
def test_a_reader_sees_old_or_new_never_torn_even_when_the_writer_is_killed(
        tmp_path: Path, writer: subprocess.Popen[str]) -> None:
    final = tmp_path / "final"
    seen = set()
    for _ in range(200):
        data = final.read_bytes()
        assert _whole(data), f"a torn read: {len(data)} bytes"
        seen.add(data[-1:])
    writer.send_signal(signal.SIGKILL)  # in the middle of some write, fsync or rename
    writer.wait()
    assert _whole(final.read_bytes())
    leftovers = sorted(name for name in os.listdir(tmp_path) if name != "final")
    assert all(name.startswith(".tmp.") for name in leftovers)  # at most the killed write's temp file
    assert len(leftovers) <= 1
    assert seen  # (which versions a reader caught depends on the timing, and is not asserted)
