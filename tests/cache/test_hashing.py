"""Hashing and copying in one pass (bootwatch/cache/hashing.py), and the flusher that makes a large copy
durable while it is being written."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bootwatch import linux
from bootwatch.cache.hashing import CHUNK_SIZE, FLUSH_WINDOW, SMALL_FILE, hash_and_copy, hash_path


@pytest.mark.slow
@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, 5 * CHUNK_SIZE + 17,
                                  SMALL_FILE + 1, 3 * FLUSH_WINDOW + 5])
def test_hash_and_copy_hashes_and_copies_in_one_pass(tmp_path: Path, size: int) -> None:
    """Several chunks cycle through the buffer pool: a buffer reused too early would corrupt a digest.
    The large sizes take the two-thread pipeline and its flusher."""
    data = os.urandom(size)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        # No reflink: force the userspace copy path on every filesystem.
        d = hash_and_copy(sfd, dfd, try_reflink=False)
    finally:
        os.close(sfd)
        os.close(dfd)
    assert d.sha1 == hashlib.sha1(data).hexdigest()
    assert d.sha256 == hashlib.sha256(data).hexdigest()
    assert d.size == size
    assert dst.read_bytes() == data
    assert hash_path(src)[0] == d


def test_hash_path_does_not_follow_a_final_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(OSError):
        hash_path(tmp_path / "link")


def test_an_error_the_flusher_meets_is_raised_not_swallowed(tmp_path: Path) -> None:
    """The kernel reports a writeback error once per file, so an error the flusher's fdatasync
    saw would be missing from the caller's fsync: hash_and_copy must raise it itself.

    /dev/null takes every pwrite and refuses fdatasync (EINVAL): a real error from the kernel,
    met only by the flusher, since nothing else in the copy syncs."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(2 * FLUSH_WINDOW + CHUNK_SIZE))
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open("/dev/null", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as caught:
            hash_and_copy(sfd, dfd, try_reflink=False)
    finally:
        os.close(sfd)
        os.close(dfd)
    assert caught.value.errno == errno.EINVAL


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (apt-get install strace)")
def test_a_large_copy_is_flushed_while_it_is_being_written(tmp_path: Path) -> None:
    """Watch the real system calls: fdatasync of the copy runs on a thread of its own, before the
    last chunk is written, so the caller's final fsync has only the tail left to flush."""
    size = 4 * FLUSH_WINDOW
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(size))
    script = ("import os, sys\n"
              "from bootwatch.cache.hashing import hash_and_copy\n"
              "s = os.open(sys.argv[1], os.O_RDONLY)\n"
              "d = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)\n"
              "print(d, flush=True)\n"
              "hash_and_copy(s, d, try_reflink=False)\n")
    log = tmp_path / "strace.log"
    proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=pwrite64,fdatasync", "-o", str(log),
                           sys.executable, "-c", script, str(src), str(dst)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    fd = proc.stdout.strip()
    calls = [(int(m["pid"]), m["call"]) for m in re.finditer(
        rf"^(?P<pid>\d+) +(?P<call>pwrite64|fdatasync)\({fd}\b", log.read_text(), re.M)]
    writes = [i for i, (_, call) in enumerate(calls) if call == "pwrite64"]
    syncs = [i for i, (_, call) in enumerate(calls) if call == "fdatasync"]
    assert len(writes) == size // CHUNK_SIZE, log.read_text()[-2000:]
    assert syncs and syncs[0] < writes[-1], "no fdatasync of the copy before its last write"
    writer_pids = {calls[i][0] for i in writes}
    assert all(calls[i][0] not in writer_pids for i in syncs), "the flushes must not stall a writing thread"
    assert Path(dst).read_bytes() == src.read_bytes()


def resident_fraction(path: Path) -> float:
    """The fraction of the file's pages in the page cache, from mincore(2) on a private mapping."""
    libc = linux.libc()  # the C library, loaded once
    page = mmap.PAGESIZE
    size = path.stat().st_size
    pages = (size + page - 1) // page
    vector = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapping:
        start = ctypes.c_char.from_buffer(mapping)
        try:
            rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size), vector)
        finally:
            del start  # release the export before the mapping closes
    if rc != 0:
        raise OSError(ctypes.get_errno(), "mincore", str(path))
    return sum(v & 1 for v in vector) / pages


@pytest.mark.slow
def test_a_large_copy_leaves_the_page_cache_as_it_found_it(tmp_path: Path) -> None:
    """What the flusher made durable is dropped from the page cache: caching a big image must not
    push the host's working set out. The source just written, still cached, shows the measure works."""
    size = 6 * FLUSH_WINDOW
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(size))
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        hash_and_copy(sfd, dfd, try_reflink=False)
        os.fsync(dfd)
    finally:
        os.close(sfd)
        os.close(dfd)
    assert resident_fraction(src) > 0.9
    # How much is dropped depends on how many flushes fit in the copy (here 5 of 6 windows, 0.125
    # cached); the flusher takes the first window long before the sixth is written.
    assert resident_fraction(dst) < 0.9, f"{resident_fraction(dst):.2f} of the copy is still cached"
