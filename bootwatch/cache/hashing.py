"""Hashing boot images, and copying them in the same pass.

An image id is the SHA1 of the whole file (boom's format). bootwatch also records a SHA256 at
caching time, so that a later verification does not rest on SHA1 alone. Both digests are computed
from one read of the source: the SHA1 on the calling thread, the SHA256 on a helper thread
(``hashlib`` releases the GIL for large updates, so the two run on two cores); the two threads
share the reading and the writing of the copy (see :class:`_Pipeline`). A boot file is therefore
read exactly once to be cached.

Where the filesystem shares extents (btrfs, XFS with reflink), ``FICLONE`` makes the copy free and
only the hashing read remains.

A boot file is cached only as a version nobody is writing (:func:`hash_file`): bootwatch holds a
read lease on it while it reads (see :class:`ReadLease`). A copy is cancellable between chunks
(``cancel``), which the daemon uses to stop within moments in the middle of a large image.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import signal
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bootwatch import linux
from bootwatch.atomic import write_all
from bootwatch.cache.proc import process_writing
from bootwatch.errors import ContentChangedError, OpenForWritingError
from bootwatch.filestat import StatSignature as StatSignature
from bootwatch.safety import filesystem_magic, open_regular

# Large enough that the per-call overhead of read/update/write (and of the two threads handing
# chunks over, through semaphores written in Python) is noise, small enough that a chunk just
# read is still in the reader's L2 cache when its SHA1 or SHA256 runs. On a 1 MiB L2, hashing
# 512 MiB from the page cache: 128 KiB 0.87-0.92 of file_digest's speed, 256 KiB 0.91-0.93,
# 512 KiB 0.94-0.97, 1 MiB 0.94-0.97 (bench/, target 1).
CHUNK_SIZE = 512 << 10
# Chunks in flight, and how far ahead of its hashing each thread reads (must be < BUFFERS).
BUFFERS = 8
LOOKAHEAD = 4
# The copy's flusher thread makes the copy durable whenever this much more has been written.
FLUSH_WINDOW = 8 << 20
# Files up to this size are hashed on one thread (see hash_and_copy).
SMALL_FILE = 4 << 20


@dataclass(frozen=True)
class Digest:
    """What bootwatch knows of an image's content."""

    sha1: str
    sha256: str
    size: int


class Cancelled(Exception):
    """A copy, or a wait for the cache lock, was cancelled (the daemon is stopping). Not an error:
    nothing the copy wrote is kept, and the file is read again on the next start."""


# The signal the kernel sends when a writer breaks bootwatch's read lease. The default, SIGIO,
# terminates a process that does not handle it, and Python's handlers run only on the main thread
# while hashing runs on worker threads too. SIGURG's default action is to ignore it, so the kernel
# drops it: a break is noticed by F_GETLEASE between chunks, never by the signal.
LEASE_BREAK_SIGNAL = signal.SIGURG
# errno of F_SETLEASE where the kernel cannot give bootwatch a lease at all: the filesystem has no
# leases (EINVAL: NFS, FUSE, or fs.leases-enable=0), the caller neither owns the file nor has
# CAP_LEASE (EACCES), or a seccomp filter refuses it (EPERM, ENOSYS).
_NO_LEASE_ERRNOS = frozenset({errno.EINVAL, errno.EACCES, errno.EPERM, errno.ENOSYS, errno.ENOLCK})
# linux/magic.h: network filesystems whose client answers F_SETLEASE with EAGAIN when the server
# granted it no delegation (NFSv4) or oplock (SMB): there EAGAIN says nothing about writers.
_NETWORK_FS_MAGICS = frozenset({0x6969, 0xFF534D42, 0xFE534D42})


class ReadLease:
    """A read lease on an ``O_RDONLY`` descriptor: proof that no process writes the file meanwhile.

    ``F_SETLEASE F_RDLCK`` is refused (EAGAIN) while any process has the file open for writing,
    and a process that opens it for writing (or truncates it) while the lease is held starts a
    *lease break*: its open(2) blocks until the holder releases the lease, or
    ``/proc/sys/fs/lease-break-time`` seconds pass. So while the lease holds, the content is one
    finished version. :meth:`check` runs between chunks: once a break is pending (``F_GETLEASE``
    then says ``F_UNLCK``) it releases the lease at once, so the writer waits only for the chunk
    being read, and raises :class:`OpenForWritingError`.

    Where no lease can be had (see ``_NO_LEASE_ERRNOS``; on NFS or SMB also EAGAIN, which there
    means the server granted no delegation) the fallback asks /proc instead: every
    descriptor of every process (``/proc/PID/fdinfo`` flags) and every shared writable mapping
    (``/proc/PID/maps``) of the same device and inode, once before and once after the read, and
    the caller compares the stat signature before and after. That sees every process of this PID
    namespace that the caller may inspect (root: all of them), and cannot see writers on another
    host of a network filesystem; a writer that opens, writes and closes within one read is seen
    by the signature (its write moves mtime and ctime). A process that cannot be inspected is
    skipped, because an unprivileged caller could otherwise cache nothing at all.
    """

    def __init__(self, fd: int, path: str | Path) -> None:
        self.fd = fd
        self.path = path
        self.held = False
        self.fallback_errno: int | None = None
        try:
            fcntl.fcntl(fd, linux.F_SETSIG, LEASE_BREAK_SIGNAL)
            fcntl.fcntl(fd, linux.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as e:
            if e.errno == errno.EAGAIN and filesystem_magic(fd) not in _NETWORK_FS_MAGICS:
                raise OpenForWritingError(path) from None
            if e.errno not in _NO_LEASE_ERRNOS | {errno.EAGAIN}:
                raise
            self.fallback_errno = e.errno
            self._scan_for_writers()
            return
        self.held = True

    def __enter__(self) -> ReadLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Give the lease back (a pending writer's open returns now). Idempotent; any thread."""
        if self.held:
            self.held = False
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.fd, linux.F_SETLEASE, fcntl.F_UNLCK)

    def check(self) -> None:
        """Between chunks: raise :class:`OpenForWritingError` once a writer broke the lease."""
        if self.held and fcntl.fcntl(self.fd, linux.F_GETLEASE) != fcntl.F_RDLCK:
            self.release()
            raise OpenForWritingError(self.path, "was opened for writing by another process while it "
                                                 "was being read")

    def finish(self) -> None:
        """After the last read: the lease still holds (or, without one, no writer appeared)."""
        if self.held:
            self.check()
        elif self.fallback_errno is not None:
            self._scan_for_writers()

    def _scan_for_writers(self) -> None:
        st = os.fstat(self.fd)
        pid = process_writing(st.st_dev, st.st_ino)
        if pid is not None:
            raise OpenForWritingError(self.path, f"is still being written: process {pid} has it open for writing")


class _Aborted(Exception):
    """The other side of the pipeline failed; this side stops without an error of its own."""


class _Flusher:
    """A thread that makes the copy durable while the pipeline is still writing it.

    Why not ``sync_file_range(WRITE)`` (write-behind): it moves dirty pages to the device, but only
    ``fsync``/``fdatasync`` sends the cache FLUSH that makes them durable, and on a device with a
    volatile write cache the FLUSH is where the time goes. On a virtual disk backed by a file in
    the host's page cache, the device takes the writes at once and the FLUSH then takes several
    times as long while the host writes it all out; an SSD's cache behaves alike on a smaller scale. With
    write-behind only, the caller's final fsync paid for the whole copy after the hashing was done.

    So this thread calls ``fdatasync`` on the copy each time ``FLUSH_WINDOW`` more bytes have
    been written, while the two pipeline threads go on reading, hashing and writing. The final
    fsync then flushes only the tail. Its durability rules are unchanged: only the caller's fsync
    after the last write lets the copy take its final name.

    After each flush the flushed range is dropped from the page cache (``POSIX_FADV_DONTNEED``;
    the pages are clean by then, so the kernel frees them at once). Nothing reads a cached image
    soon, and a copy of 1 GiB should not push the host's own working set out of memory. The
    next window of the copy reuses the freed pages instead of taking new ones, so the daemon's
    system time per image does not grow with the page cache (bench/RESULTS.md, target 3).

    Errors: the kernel reports a writeback error once per open file description (``errseq_t``),
    and once this thread's ``fdatasync`` has seen it, a later fsync of the same file, even
    through a new descriptor, may return 0. So an error here is kept and raised by
    :meth:`close`, which the pipeline calls before it hands the copy back.
    """

    def __init__(self, fd: int, base: int) -> None:
        self.fd = fd
        self.base = base
        self.cond = threading.Condition()
        # The furthest byte written so far. The threads write by chunk parity, so bytes below it
        # may still be unwritten: it only says when to flush, and where the copy's data ends.
        self.written = base
        self.synced = base
        self.closing = False
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, name="bootwatch-flush", daemon=True)
        self.thread.start()

    def wrote(self, end: int) -> None:
        with self.cond:
            if end > self.written:
                self.written = end
                if self.written - self.synced >= FLUSH_WINDOW:
                    self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.closing or self.written - self.synced >= FLUSH_WINDOW)
                if self.closing:
                    return
                target = self.written
            try:
                os.fdatasync(self.fd)
            except OSError as e:
                with self.cond:
                    self.error = e
                return
            with contextlib.suppress(OSError):  # advisory
                os.posix_fadvise(self.fd, self.base, target - self.base, os.POSIX_FADV_DONTNEED)
            with self.cond:
                self.synced = target

    def close(self) -> None:
        """Stop after the flush in progress (if any); raise the error a flush met."""
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join()
        if self.error is not None:
            raise self.error


class _Pipeline:
    """One read of the source feeding two digests on two threads, each doing half of the reads.

    Hashing is the costly part and must be in order: thread 0 feeds every chunk to SHA1, thread
    1 every chunk to SHA256. Reading (and writing the copy) is split between them by chunk
    parity with ``pread``/``pwrite`` at explicit offsets, so neither thread carries all the
    copying while the other waits: on two cores the pass runs at about the speed of the slower
    digest alone. Each thread reads ``LOOKAHEAD`` chunks ahead of the one it hashes, so the
    other thread's chunk is normally ready when it is needed.

    A chunk lives in slot ``k % BUFFERS``; ``free[slot]`` counts the digests that are done with
    it (a reader takes both), ``ready[role][slot]`` says it holds chunk data for that digest.
    ``LOOKAHEAD < BUFFERS`` keeps every wait pointing at an earlier chunk, so the two threads
    cannot deadlock.

    The end of the data is the first chunk shorter than ``CHUNK_SIZE`` (``pread`` of a regular
    file is short only at its end). Chunks read ahead past it are ignored, and whatever they
    wrote to the destination is cut off again.

    Flushing behind: a :class:`_Flusher` makes each ``FLUSH_WINDOW`` of the copy durable while
    the two threads go on, so the caller's final ``fsync`` finds little left to do.
    """

    def __init__(self, src_fd: int, dst_fd: int | None, src_base: int, dst_base: int,
                 flusher: _Flusher | None = None,
                 between_chunks: Callable[[], None] | None = None, bound: int | None = None) -> None:
        self.src_fd = src_fd
        self.dst_fd = dst_fd
        self.src_base = src_base
        self.dst_base = dst_base
        self.views = [memoryview(bytearray(CHUNK_SIZE)) for _ in range(BUFFERS)]
        self.sizes = [0] * BUFFERS
        self.free = [threading.Semaphore(2) for _ in range(BUFFERS)]
        self.ready = [[threading.Semaphore(0) for _ in range(BUFFERS)] for _ in range(2)]
        self.lock = threading.Lock()
        self.aborted = False
        self.error: BaseException | None = None
        self.end_chunk: int | None = None
        self.flusher = flusher  # present exactly when there is a destination; it tracks the furthest byte written
        self.between_chunks = between_chunks  # raises to stop the copy (cancelled, lease broken)
        # The chunk that holds byte ``bound`` (one past the size fstat gave) ends the read whatever
        # it holds: enough to tell that there was more, never an endless read.
        self.last_chunk = None if bound is None else bound // CHUNK_SIZE

    def _acquire(self, semaphore: threading.Semaphore) -> None:
        semaphore.acquire()
        if self.aborted:
            raise _Aborted()

    def abort(self, error: BaseException) -> None:
        """Record the first real error and wake every wait on the other thread."""
        with self.lock:
            if self.error is None and not isinstance(error, _Aborted):
                self.error = error
            self.aborted = True
        for slot in range(BUFFERS):
            self.free[slot].release(2)
            self.ready[0][slot].release()
            self.ready[1][slot].release()

    def _read(self, k: int) -> None:
        slot = k % BUFFERS
        self._acquire(self.free[slot])
        self._acquire(self.free[slot])
        n = 0
        end = self.end_chunk
        if (end is None or k <= end) and (self.last_chunk is None or k <= self.last_chunk):
            if self.between_chunks is not None:
                self.between_chunks()
            view = self.views[slot]
            n = os.preadv(self.src_fd, [view], self.src_base + k * CHUNK_SIZE)
            if self.dst_fd is not None and n:
                write_all(self.dst_fd, view[:n], self.dst_base + k * CHUNK_SIZE)
                assert self.flusher is not None
                self.flusher.wrote(self.dst_base + k * CHUNK_SIZE + n)
            if n < CHUNK_SIZE or k == self.last_chunk:
                with self.lock:
                    if self.end_chunk is None or k < self.end_chunk:
                        self.end_chunk = k
        self.sizes[slot] = n
        self.ready[0][slot].release()
        self.ready[1][slot].release()

    def run(self, role: int, digest: hashlib._Hash) -> int:
        """Feed every chunk, in order, to ``digest``; read the chunks of this role. Return the last chunk."""
        try:
            for k in range(LOOKAHEAD):
                if k % 2 == role:
                    self._read(k)
            k = 0
            while True:
                if (k + LOOKAHEAD) % 2 == role:
                    self._read(k + LOOKAHEAD)
                slot = k % BUFFERS
                self._acquire(self.ready[role][slot])
                n = self.sizes[slot]
                if n:
                    digest.update(self.views[slot][:n])
                self.free[slot].release()
                if n < CHUNK_SIZE or k == self.last_chunk:
                    return k
                k += 1
        except BaseException as e:
            self.abort(e)
            raise


def _reflink(src_fd: int, dst_fd: int) -> bool:
    """Try to share the source's extents with the destination. False where unsupported."""
    try:
        linux.reflink(src_fd, dst_fd)
        return True
    except OSError:
        return False


def _between_chunks(cancel: threading.Event | None, lease: ReadLease | None) -> Callable[[], None] | None:
    if cancel is None and lease is None:
        return None

    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if lease is not None:
            lease.check()
    return check


def hash_and_copy(src_fd: int, dst_fd: int | None = None, *, try_reflink: bool = True,
                  cancel: threading.Event | None = None, lease: ReadLease | None = None) -> Digest:
    """Hash everything readable from ``src_fd`` (from its current offset) and copy it to ``dst_fd``.

    With ``dst_fd`` None this only hashes. The destination's last bytes are not fsynced here: the
    caller decides when, because it also has a rename and a directory to make durable (a large
    copy is mostly durable already, see :class:`_Flusher`; the rest is being written back). Both
    offsets are left after the data, as ``read``/``write`` would leave them. A source that cannot
    ``pread`` (a pipe) is read sequentially.

    A regular file is read up to one chunk past the size ``fstat`` gives at the start, never
    further: a file that grows without end (or a kernel file that says size 0) cannot make this
    read forever. A digest larger than that size tells the caller the file was not what its size
    said (see :func:`hash_file`).

    Before every chunk both threads check ``cancel`` (raising :class:`Cancelled` once it is set)
    and ``lease`` (raising :class:`OpenForWritingError` once a writer broke it); the caller
    discards what was copied.
    """
    between_chunks = _between_chunks(cancel, lease)
    if between_chunks is not None:
        between_chunks()
    if dst_fd is not None and try_reflink and _reflink(src_fd, dst_fd):
        dst_fd = None  # the data is already there; one read for the digests remains
    try:
        src_base = os.lseek(src_fd, 0, os.SEEK_CUR)
    except OSError as e:
        if e.errno != errno.ESPIPE:
            raise
        return _hash_stream(src_fd, dst_fd, between_chunks)
    st = os.fstat(src_fd)
    bound = max(st.st_size - src_base, 0) if stat.S_ISREG(st.st_mode) else None
    if bound is not None and bound <= SMALL_FILE:
        # Two threads and their buffers cost more than hashing a small file on one.
        digest = _hash_stream(src_fd, dst_fd, between_chunks, bound)
        _start_writeback(dst_fd)
        return digest
    return _hash_in_pipeline(src_fd, dst_fd, src_base, bound, between_chunks)


def _hash_in_pipeline(src_fd: int, dst_fd: int | None, src_base: int, bound: int | None,
                      between_chunks: Callable[[], None] | None) -> Digest:
    """:func:`hash_and_copy` of a large file (or one of unknown size) from ``src_base``: the two
    threads of a :class:`_Pipeline`, and a :class:`_Flusher` behind the copy."""
    dst_base = os.lseek(dst_fd, 0, os.SEEK_CUR) if dst_fd is not None else 0
    with contextlib.suppress(OSError):  # a hint for the readahead of a cold file
        os.posix_fadvise(src_fd, src_base, 0, os.POSIX_FADV_SEQUENTIAL)

    flusher = _Flusher(dst_fd, dst_base) if dst_fd is not None else None
    pipeline = _Pipeline(src_fd, dst_fd, src_base, dst_base, flusher, between_chunks, bound)
    sha1 = hashlib.sha1(usedforsecurity=False)
    sha256 = hashlib.sha256()

    def sha256_side() -> None:
        with contextlib.suppress(BaseException):  # recorded by abort(); re-raised on the caller's thread
            pipeline.run(1, sha256)

    worker = threading.Thread(target=sha256_side, name="bootwatch-sha256", daemon=True)
    worker.start()
    try:
        last = pipeline.run(0, sha1)
    except _Aborted:
        last = -1
    finally:
        worker.join()
        if flusher is not None:
            try:
                flusher.close()
            except OSError as e:
                if pipeline.error is None:  # the pipeline's own error, if any, comes first
                    pipeline.error = e
    if pipeline.error is not None:
        raise pipeline.error
    size = last * CHUNK_SIZE + pipeline.sizes[last % BUFFERS]
    os.lseek(src_fd, src_base + size, os.SEEK_SET)
    if dst_fd is not None and flusher is not None:
        if flusher.written > dst_base + size:
            os.ftruncate(dst_fd, dst_base + size)  # drop what chunks read past a growing end wrote
        os.lseek(dst_fd, dst_base + size, os.SEEK_SET)
        _start_writeback(dst_fd)
    return Digest(sha1.hexdigest(), sha256.hexdigest(), size)


def _start_writeback(dst_fd: int | None) -> None:
    """Start writing the whole copy back now, without waiting: the disk works while the caller
    hashes the next image, and the fsync or syncfs that makes the batch durable finds less to do."""
    if dst_fd is not None:
        with contextlib.suppress(OSError):  # advisory
            linux.sync_file_range(dst_fd, 0, 0, linux.SYNC_FILE_RANGE_WRITE)


def _hash_stream(src_fd: int, dst_fd: int | None,
                 between_chunks: Callable[[], None] | None = None, bound: int | None = None) -> Digest:
    """The sequential fallback for a source without offsets, and the way for a small file: one
    thread, both digests. With ``bound``, it stops once more than ``bound`` bytes came."""
    sha1 = hashlib.sha1(usedforsecurity=False)
    sha256 = hashlib.sha256()
    view = memoryview(bytearray(CHUNK_SIZE))
    size = 0
    while True:
        if between_chunks is not None:
            between_chunks()
        n = os.readv(src_fd, [view])
        if n == 0:
            break
        chunk = view[:n]
        sha1.update(chunk)
        sha256.update(chunk)
        if dst_fd is not None:
            write_all(dst_fd, chunk)
        size += n
        if bound is not None and size > bound:
            break
    return Digest(sha1.hexdigest(), sha256.hexdigest(), size)


def hash_file(fd: int, dst_fd: int | None = None, *, path: str | Path,
              cancel: threading.Event | None = None,
              try_reflink: bool = True) -> tuple[Digest, os.stat_result]:
    """Hash (and copy to ``dst_fd``) the file open ``O_RDONLY`` at ``fd`` as one finished version.

    Under a :class:`ReadLease`: :class:`OpenForWritingError` if a process has it open for writing
    or opens it meanwhile; :class:`ContentChangedError` if its stat signature moved all the same.
    Returns the digest and the stat after the read (the version the digest describes).
    """
    with ReadLease(fd, path) as lease:
        before = os.fstat(fd)
        digest = hash_and_copy(fd, dst_fd, try_reflink=try_reflink, cancel=cancel, lease=lease)
        lease.finish()
        after = os.fstat(fd)
    if StatSignature.of(before) != StatSignature.of(after):
        raise ContentChangedError(path)
    if digest.size > after.st_size:  # read no further than one chunk past it (see hash_and_copy)
        raise ContentChangedError(path, "held more data than its size says: not a file whose content can be cached",
                                  hint=None)
    return digest, after


def hash_path(path: os.PathLike[str] | str, *,
              cancel: threading.Event | None = None) -> tuple[Digest, StatSignature]:
    """Hash a regular file by path without following a final symlink; also return the signature read.

    Anything but a regular file raises :class:`NotRegularFileError` (an ``OSError``) before a read;
    a file that is being written :class:`ContentChangedError` (or its :class:`OpenForWritingError`),
    as :func:`hash_file`.
    """
    fd = open_regular(path)
    try:
        digest, after = hash_file(fd, path=os.fspath(path), cancel=cancel)
    finally:
        os.close(fd)
    return digest, StatSignature.of(after)
