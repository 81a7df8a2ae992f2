"""Hashing boot images, and copying them in the same pass.

An image id is the SHA1 of the whole file (boom's format). bootwatch also records a SHA256 at
caching time, so that a later verification does not rest on SHA1 alone. Both digests are computed
from one read of the source: the SHA1 on the calling thread, the SHA256 on a helper thread
(``hashlib`` releases the GIL for large updates, so the two run on two cores), and the same buffer
is written to the destination. A boot file is therefore read exactly once to be cached.

Where the filesystem shares extents (btrfs, XFS with reflink), ``FICLONE`` makes the copy free and
only the hashing read remains.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from typing import Optional, Tuple

# linux/fs.h: #define FICLONE _IOW(0x94, 9, int)
FICLONE = 0x40049409

# Large enough that the per-call overhead of read/update/write is noise, small enough to stay in L2.
CHUNK_SIZE = 1 << 20
# Buffers in flight between the reader and the SHA256 thread.
BUFFERS = 4


@dataclass(frozen=True)
class Digest:
    """What bootwatch knows of an image's content."""

    sha1: str
    sha256: str
    size: int


@dataclass(frozen=True)
class StatSignature:
    """The fields that change when a file's content may have changed.

    If a boot file's signature equals the one recorded when it was last hashed, its content is
    taken as unchanged and it is not read again. ``ctime`` catches a rewrite that restored the
    mtime (``touch -r``); device and inode catch a rename over the file.
    """

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "StatSignature":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def to_json(self) -> list:
        return [self.device, self.inode, self.size, self.mtime_ns, self.ctime_ns]

    @classmethod
    def from_json(cls, value: object) -> Optional["StatSignature"]:
        if (isinstance(value, list) and len(value) == 5
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            return cls(*value)
        return None


class ContentChangedError(Exception):
    """The source changed while it was being read: the digest describes no real version of it."""


def _sha256_worker(jobs: "queue.Queue[Optional[memoryview]]", done: "queue.Queue[bytearray]",
                   digest: "hashlib._Hash", buffers: dict) -> None:
    while True:
        view = jobs.get()
        if view is None:
            return
        digest.update(view)
        done.put(buffers[id(view.obj)])


def _reflink(src_fd: int, dst_fd: int) -> bool:
    """Try to share the source's extents with the destination. False where unsupported."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return True
    except OSError:
        return False


def hash_and_copy(src_fd: int, dst_fd: Optional[int] = None, *, try_reflink: bool = True) -> Digest:
    """Hash everything readable from ``src_fd`` (from its current offset) and copy it to ``dst_fd``.

    With ``dst_fd`` None this only hashes. The destination is not fsynced here: the caller decides
    when, because it also has a rename and a directory to make durable.
    """
    if dst_fd is not None and try_reflink and _reflink(src_fd, dst_fd):
        dst_fd = None  # the data is already there; one read for the digests remains

    sha1 = hashlib.sha1(usedforsecurity=False)
    sha256 = hashlib.sha256()
    free: "queue.Queue[bytearray]" = queue.Queue()
    buffers = {}
    for _ in range(BUFFERS):
        buf = bytearray(CHUNK_SIZE)
        buffers[id(buf)] = buf
        free.put(buf)
    jobs: "queue.Queue[Optional[memoryview]]" = queue.Queue()
    worker = threading.Thread(target=_sha256_worker, args=(jobs, free, sha256, buffers),
                              name="bootwatch-sha256", daemon=True)
    worker.start()
    size = 0
    try:
        while True:
            buf = free.get()
            view = memoryview(buf)
            n = os.readv(src_fd, [view])
            if n == 0:
                free.put(buf)
                break
            chunk = view[:n]
            jobs.put(chunk)
            sha1.update(chunk)
            if dst_fd is not None:
                _write_all(dst_fd, chunk)
            size += n
    finally:
        jobs.put(None)
        worker.join()
    return Digest(sha1.hexdigest(), sha256.hexdigest(), size)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def hash_path(path: "os.PathLike[str] | str") -> Tuple[Digest, StatSignature]:
    """Hash a file by path without following a final symlink; also return the signature read."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        before = os.fstat(fd)
        digest = hash_and_copy(fd)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if StatSignature.of(before) != StatSignature.of(after):
        raise ContentChangedError(os.fspath(path))
    return digest, StatSignature.of(after)
