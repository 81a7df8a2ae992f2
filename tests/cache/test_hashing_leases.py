"""A file some process still has open for writing is never cached.

A real child process writes a boot file the way ``install`` or ``cp`` onto slow media does: it
creates the file an entry already names, writes 2 MiB, pauses, writes the rest, closes it. While
it pauses, neither ``add``, ``scan`` nor the daemon may cache those 2 MiB; once it has closed the
file the whole content is cached, and nothing of the partial one is kept.

bootwatch holds a read lease while it reads (``hashing.ReadLease``): refused while a writer has
the file open, and broken (the writer's open waits for bootwatch to let go) when one opens it
meanwhile. A writer that opens the file during a slow read must get through at once, not after
``/proc/sys/fs/lease-break-time`` (45 s), and the copy is abandoned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess, write_config
from polling import wait_for
from slowdisk import loop_ext4, throttled_reads

from bootwatch.cache.hashing import hash_path
from bootwatch.cache.proc import process_writing
from bootwatch.errors import OpenForWritingError

pytestmark = pytest.mark.slow

BootTree = Any  # conftest.BootTree (the boot_tree fixture); conftest is not imported by name


def sha1_bytes(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


K = "/vmlinuz-w"
FIRST = 2 << 20

# Writes argv[1]'s bytes to argv[2] as install(1) does, pausing after the first 2 MiB until the
# test sends a line.
WRITER = f"""
import os, sys
data = open(sys.argv[1], "rb").read()
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
def write(chunk):
    while chunk:
        chunk = chunk[os.write(fd, chunk):]
write(data[:{FIRST}])
print("paused", flush=True)
sys.stdin.readline()
write(data[{FIRST}:])
os.close(fd)
print("done", flush=True)
"""


class Writer:
    def __init__(self, tree: BootTree, path: str, data: bytes) -> None:
        source = tree.root / "writer-source"
        source.write_bytes(data)
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, str(source), str(tree.path(path))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "paused\n"

    def finish(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "done\n"
        assert self.proc.wait(30) == 0


@contextlib.contextmanager
def writing(tree: BootTree, path: str, data: bytes) -> Iterator[Writer]:
    writer = Writer(tree, path, data)
    try:
        yield writer
    finally:
        if writer.proc.poll() is None:
            writer.proc.kill()
        writer.proc.wait()


def index_paths(tree: BootTree) -> dict:
    try:
        return json.loads(tree.index_file.read_text())["index"]
    except FileNotFoundError:
        return {}


def test_add_does_not_cache_a_file_still_being_written(boot_tree: BootTree) -> None:
    data = os.urandom(2 * FIRST)
    boot_tree.write_entry("w", linux=K)
    with writing(boot_tree, K, data) as writer:
        rc, out, err = boot_tree.cli("add", K)
        line = boot_tree.assert_clean_error(rc, err, names=[str(boot_tree.path(K))])
        assert "still being written" in line
        assert "bootwatch: hint: try again once the program writing it has finished" in err
        assert K not in index_paths(boot_tree)
        assert boot_tree.images_on_disk() == [] and boot_tree.temp_files() == []
        writer.finish()
    rc, out, err = boot_tree.cli("add", K)
    assert rc == 0, err
    assert index_paths(boot_tree)[K] == [sha1_bytes(data)]
    assert boot_tree.images_on_disk() == [sha1_bytes(data)]


def test_scan_does_not_cache_a_file_still_being_written(boot_tree: BootTree) -> None:
    data = os.urandom(2 * FIRST)
    boot_tree.write_entry("w", linux=K)
    with writing(boot_tree, K, data) as writer:
        rc, out, err = boot_tree.cli("scan", "--json")
        assert rc == 1 and "Traceback" not in err, err
        report = json.loads(out)
        assert report["cached"] == [] and report["retry"] == [K]
        assert any("still being written" in e for e in report["errors"])
        assert K not in index_paths(boot_tree) and boot_tree.images_on_disk() == []
        writer.finish()
    rc, out, err = boot_tree.cli("scan", "--json")
    assert rc == 0, err
    assert json.loads(out)["cached"] == [K]
    assert index_paths(boot_tree)[K] == [sha1_bytes(data)]
    assert boot_tree.images_on_disk() == [sha1_bytes(data)]


def test_the_daemon_caches_only_the_complete_file(boot_tree: BootTree) -> None:
    """The writer pauses for 1.5 s, many settle windows: the daemon's batch, its first retry and the
    writer's close all meet the file; only the complete content may be cached, and no partial
    image may stay behind as an older image of the path."""
    config = write_config(boot_tree.root / "daemon.toml", boot_tree.boot, boot_tree.cache, boot_tree.root / "run",
                          watch={"settle": "100ms"})
    boot_tree.write_entry("w", linux=K)
    data = os.urandom(2 * FIRST)
    with DaemonProcess(config, boot_tree.root) as daemon:
        daemon.wait_ready()
        with writing(boot_tree, K, data) as writer:
            time.sleep(1.5)  # the pause: many settle windows and the first retry
            assert K not in index_paths(boot_tree), daemon.output()
            assert boot_tree.images_on_disk() == []
            writer.finish()
        wait_for(lambda: index_paths(boot_tree).get(K), what="the complete file to be cached")
        assert index_paths(boot_tree)[K] == [sha1_bytes(data)], daemon.output()
        assert boot_tree.images_on_disk() == [sha1_bytes(data)]
        assert "Traceback" not in daemon.output()


# A writer that opens the file (as install(1) reopening it, or a second cp) and says how long
# its open(2) took; it keeps the file open until told on stdin.
OPENER = """
import os, sys, time
started = time.monotonic()
fd = os.open(sys.argv[1], os.O_WRONLY)
print(f"{time.monotonic() - started:.3f}", flush=True)
sys.stdin.readline()
"""


def test_a_writer_opening_the_file_during_hashing_gets_through_and_the_copy_is_abandoned(
        boot_tree: BootTree) -> None:
    """The boot directory is a loop-mounted ext4 read at 4 MB/s (a blkio cgroup), so caching its
    48 MiB kernel takes about 12 s. A writer opens the file once the copy is under way."""
    data = os.urandom(48 << 20)
    with loop_ext4(boot_tree.root / "boot.img", boot_tree.boot, 128) as fs:
        boot_tree.entries.mkdir(parents=True)
        boot_tree.write_entry("w", linux=K)
        boot_tree.path(K).write_bytes(data)
        fs.remount()
        with throttled_reads(fs.majmin, 4 << 20) as cgroup:
            argv = [sys.executable, "-m", "bootwatch", "--boot-dir", str(boot_tree.boot),
                    "--cache-dir", str(boot_tree.cache), "add", K]
            add = subprocess.Popen(argv, env=boot_tree.env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, preexec_fn=lambda: cgroup.add(os.getpid()))
            try:
                temp_dir = boot_tree.cache / ".tmp"
                wait_for(lambda: any(p.stat().st_size >= 1 << 20 for p in temp_dir.glob(".bootwatch-tmp.*"))
                         if temp_dir.is_dir() else False, what="the copy to be under way")
                opener = subprocess.Popen([sys.executable, "-c", OPENER, str(boot_tree.path(K))],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                try:
                    assert opener.stdout is not None
                    waited = float(opener.stdout.readline())
                    out, err = add.communicate(timeout=60)
                finally:
                    opener.kill()
                    opener.wait()
            finally:
                if add.poll() is None:
                    add.kill()
                add.wait()
        # Behaviour bound, not a speed benchmark: the lease break time is 45 s by default.
        assert waited < 5.0, f"the writer's open(2) waited {waited} s for bootwatch's lease"
        line = boot_tree.assert_clean_error(add.returncode, err, names=[str(boot_tree.path(K))])
        assert "opened for writing" in line
        assert K not in index_paths(boot_tree)
        assert boot_tree.images_on_disk() == [] and boot_tree.temp_files() == []


# ---------------------------------------------------------------- without leases

def test_the_fallback_sees_a_writer_by_descriptor_and_by_shared_mapping(tmp_path: Path) -> None:
    """Where the kernel gives no lease, /proc tells: a process with a write descriptor, or with
    a shared writable mapping and no descriptor left (mmap, then close)."""
    target = tmp_path / "f"
    target.write_bytes(os.urandom(8192))
    st = os.stat(target)
    assert process_writing(st.st_dev, st.st_ino) is None
    reader = os.open(target, os.O_RDONLY)  # a reader is no writer
    try:
        assert process_writing(st.st_dev, st.st_ino) is None
    finally:
        os.close(reader)
    for script in ("import os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n",
                   "import mmap, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
                   "m = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)\nos.close(fd)\n"):
        child = subprocess.Popen([sys.executable, "-c", script + "print('ok', flush=True)\nsys.stdin.readline()\n",
                                  str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "ok\n"
            assert process_writing(st.st_dev, st.st_ino) == child.pid
        finally:
            child.kill()
            child.wait()
        assert process_writing(st.st_dev, st.st_ino) is None


# Hashes argv[1] as the unprivileged user it runs as; prints the outcome.
UNPRIVILEGED_HASH = """
import sys
sys.path.insert(0, sys.argv[2])
from bootwatch.errors import OpenForWritingError
from bootwatch.cache.hashing import hash_path
try:
    print(hash_path(sys.argv[1])[0].sha1)
except OpenForWritingError as e:
    print("refused:", e)
"""


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs root to run a child as nobody")
def test_without_a_lease_a_writer_is_still_seen(boot_tree: BootTree) -> None:
    """nobody may not lease a file root owns (EACCES without CAP_LEASE): the /proc fallback
    sees nobody's own writer, and the file is hashed once the writer is gone."""
    directory = Path(tempfile.mkdtemp(prefix="bootwatch-lease-"))
    try:
        os.chmod(directory, 0o755)
        target = directory / "vmlinuz"
        data = os.urandom(FIRST)
        target.write_bytes(data)
        os.chmod(target, 0o666)  # root's file, writable by nobody

        def as_nobody(argv: list, **kwargs) -> subprocess.Popen:
            return subprocess.Popen(argv, user=65534, group=65534, extra_groups=[], cwd=directory,
                                    env={"PATH": "/usr/bin:/bin"}, text=True, **kwargs)

        def hash_as_nobody() -> str:
            proc = as_nobody(["/usr/bin/python3", "-c", UNPRIVILEGED_HASH, str(target),
                              str(Path(__file__).resolve().parents[2])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            return out.strip()

        writer = as_nobody(["/usr/bin/python3", "-c", "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\n"
                            "print('ok', flush=True)\nsys.stdin.readline()\n", str(target)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "ok\n"
            assert hash_as_nobody() == f"refused: {target}: is still being written: process {writer.pid} " \
                                       "has it open for writing"
        finally:
            writer.kill()
            writer.wait()
        assert hash_as_nobody() == sha1_bytes(data)
    finally:
        shutil.rmtree(directory)


def test_a_file_open_for_writing_in_this_process_is_refused_too(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"x" * 100)
    fd = os.open(target, os.O_WRONLY)
    try:
        with pytest.raises(OpenForWritingError):
            hash_path(target)
    finally:
        os.close(fd)
    assert hash_path(target)[0].sha1 == sha1_bytes(b"x" * 100)
