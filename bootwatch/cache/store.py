"""The cache directory on disk: atomic files, the lock, and who may delete what.

On-disk protocol (one directory, shared with boom):

    Who checks what. The cache directory is opened once per CacheStore, with O_DIRECTORY |
    O_NOFOLLOW, reached from / one directory at a time by descriptor (safety.py): every
    directory above it must be owned by root or the running user and not writable by group or
    other unless sticky; the cache directory itself must be a real directory owned by the running
    user and not writable by group or other (fstat of the descriptor, not lstat of the name).
    Every later operation (the lock, the index, images, listings, renames, unlinks) works relative
    to that descriptor, so a directory swapped in under the same name is never used; a later check
    that finds another directory at the name refuses. Each listing reads through a descriptor of
    its own, opened relative to the held one (threads listing at once never share an offset).
    .tmp/, links/ and lost+found/ are opened relative to it with O_NOFOLLOW and pass the same
    checks as the cache directory. Every file read is opened O_NONBLOCK and must be a regular
    file (fstat of the descriptor): a FIFO or a device is an error naming it, never a read that
    blocks. A file read whole has a size bound
    (the index and the derived files: MAX_INDEX_SIZE, 64 MiB), checked on the fstat of the opened
    descriptor and while reading: a larger index is corrupt, a larger derived file ignored.

    cacheindex.json         boom's index. bootwatch replaces it only by rename(2) of a complete,
                            fsynced temp file, then fsyncs the directory; a reader without the lock
                            sees the old or the new index, never a mix. (boom itself rewrites it in
                            place without a lock: a read that fails to parse is retried a few times
                            before the index is called corrupt.) No index and no image is a new,
                            empty cache. The first images of a new cache are preceded by an empty
                            index, so images without an index always mean a lost index: every
                            command refuses it (IndexMissingError: nothing is deleted or written)
                            until fsck --repair rebuilds an index from the images and boot files.
    <sha1>.img              an image; its name is the SHA1 of its content. Created by rename of a
                            fsynced temp file, never written in place. Deleted only by a holder of
                            the lock, and only once the index written before no longer lists it.
    .bootwatch.lock         empty. Every writer (add, remove, restore, clean, verify's results,
                            fsck --repair, pin, gc, the daemon's batches) holds flock(LOCK_EX) on it
                            for the whole operation. Readers take no lock. On a read-only file
                            system a transaction that only reads the cache (restores) takes the
                            same flock on a read-only descriptor (flock needs no write access);
                            it writes no index, so what it did (the restored file's signature) is
                            recorded by the first pass after the cache is writable again.
                            clean --dry-run takes the same read-only flock, and none if there is
                            no lock file yet: a dry run creates nothing, not even this file.
    the directory itself    the running daemon holds flock(LOCK_EX) on the cache directory (an
                            O_RDONLY descriptor of it) for its whole life: a second daemon on the
                            same cache is refused, and /proc/locks names the one that runs. A lock
                            on the directory needs no file, so a read-only cache can be locked
                            too. Nothing else locks the directory; writers use .bootwatch.lock.
    .bootwatch-signatures   derived from the index: its signature table as it is (index.py's
                            SignatureTable, which every pass asks whether a boot file is
                            unchanged), keyed by the SHA1 of the index bytes, in the format
                            bootwatch-signatures/3 (see signatures.py). Written by a holder of the
                            lock after a full pass, by rename; not fsynced, and ignored by a
                            reader unless it matches the index it just read and is of that
                            format. Anyone may delete it.
    .bootwatch-references   the boot entries as last read completely, from every entry source
                            (see cache/references.py), JSON, "version": 4: the boot directory
                            and the mount it is on (mountid.py: with the directory's path within
                            its filesystem, "fs_path"), the ESP's mount point and its
                            mount (null without an ESP, or while nothing is mounted there),
                            each source location that was there ("locations": source, path
                            as read, resolved path, mount; a BLS or UKI directory, a
                            grub.cfg), the entries as "source:id" and the cache
                            keys they referenced. Written (fsynced, by rename) by a holder of the
                            lock when they change, by 'clean --force', and by a read without a
                            trustworthy record that has evidence of being the real boot
                            partitions; never written while the boot directory or the ESP is
                            a mount point in /etc/fstab and not mounted (cache/fstab.py).
                            Compared with at every read of the entries: a recorded
                            location missing or no longer read (grub.cfg gone with an unmounted
                            /boot), another filesystem or another directory of it (fs_path) at
                            the boot directory, a location or the ESP (whether it is a mount
                            root is not compared: a bind mount of itself is the same), or
                            every recorded entry gone at once makes references unknown. Missing,
                            torn, not a regular file or of another version, it is no record:
                            references are unknown until a read starts the history again.
    .bootwatch-scan-proof   the inputs of the last 'scan --quiet' whose pass found nothing to do,
                            reported nothing and logged nothing (see bootwatch/scanproof.py): the
                            stat signature of every file and directory it read or listed, the
                            names in this directory and .tmp/, the mounts, the settings. Written
                            by that scan as a holder of the lock (by rename, not fsynced), only
                            when every input is older than a racy margin; read, without the lock,
                            by the console entry point, which exits as the scan would only if
                            every recorded signature is the live one. Never deleted: a stale one
                            matches nothing. Anyone may delete it.
    .tmp/.bootwatch-tmp.*   a file being written by the holder of the lock (images and the index),
                            renamed into the cache directory when complete. Since only the holder
                            creates them, any temp file that a new holder finds is left by a writer
                            that died: the holder removes it (the daemon's start and scan always
                            take the lock when there is one; BootCache.stale_temp_files also
                            covers the restore temp files in the boot directory). A copy the
                            daemon cancels when it stops removes its own. A temp file is always a
                            regular file (O_CREAT | O_EXCL): anything else of that name (a
                            directory, a FIFO, a symlink) is not bootwatch's, gets one warning
                            naming it, and is left alone. They live in a
                            subdirectory so that the daemon's inotify watch on the cache directory
                            (not recursive) never sees bootwatch's own writes, only other
                            programs' changes.
    links/<id>.<...>.img    hard links that pin an image for a running program (see pins.py).
                            An image with a link is never deleted by clean.
    lost+found/             images fsck --repair could not give back to a path. Never deleted by
                            bootwatch: an administrator decides.
    cacheindex.json.corrupt-<time>[.<n>]
                            a COPY of a corrupt index, made (fsynced) by fsck --repair before it
                            rebuilds anything; the corrupt index itself stays at its name until the
                            rebuilt one replaces it by rename, so a killed repair never leaves the
                            cache without an index. Never deleted by bootwatch. While a copy exists
                            that no completed repair superseded, no image is deleted by anyone
                            (clean refuses, the daemon keeps what it unlists as orphans): the index
                            may be missing what the copy knew. An index that is a symlink is
                            never followed: its copy is a symlink to the same target. An index
                            larger than MAX_INDEX_SIZE is never read: its copy is a hard link.
    .cacheindex.json.corrupt-<time>[.<n>].superseded
                            empty; says that a completed repair merged what could be salvaged of
                            that copy into the index. Created (O_CREAT | O_EXCL, never opened if
                            something is there) by fsck --repair after the rebuilt index is in
                            place (rename, directory fsync). Only a regular file is a mark: a
                            FIFO or a directory at its name leaves the copy unsuperseded, and is
                            reported. A new copy never takes a name whose mark exists. A copy that
                            cannot be read (not a regular file or symlink, an I/O error) is merged
                            into nothing and never marked: it blocks deletions until a person moves
                            it away. A repair killed before marking leaves the copy unsuperseded:
                            the next fsck --repair merges it again (paths the index lacks) and then
                            marks it.

Cache keys (the index's paths) are boom's: a path relative to the boot directory
(/vmlinuz-6.1.0), which boom joins to its boot path. A file on an ESP outside the boot directory
has the key of its path from the boot directory (/../efi/EFI/Linux/arch.efi for an ESP at /efi,
see entries/inventory.py): the only keys with '..' components, all of them leading, never equal
to a key below the boot directory. Such a key is followed only if it lands inside the ESP and is
written exactly so (safety.resolve_in_boot); anything else (/../../etc/shadow) is never read or
written. What follows about the boot directory holds for the ESP too: a restore there writes the
file and its marker beside it, as boom does.

In the boot directory, bootwatch writes only by restore (see operations.py):

    .bootwatch-restore.*    a restore's temp file, linked to its final name when complete. Any
                            left by a killed restore are removed by a holder of the lock: clean,
                            and the full pass of the daemon's start and of scan. Only regular files:
                            anything else of that name is warned about once and left alone.
    <name>                  a restored boot file, written at the path's very name (its directory
                            resolved inside the boot directory, its last component never
                            followed: a dangling symlink there is reported and left, never
                            restored through). Its identity (device, inode, size, mtime, ctime,
                            mode, owner, and the birth time and inode generation where the
                            filesystem has them, see fileid.py) is recorded in the index when it
                            is written. bootwatch deletes a boot file only if that name holds
                            that very file, unchanged since, its marker is beside it, no entry
                            references the path and no referenced path leads to the file: a
                            file anyone else put there (a package reinstalled by rename, with
                            the same content) is theirs. It is deleted by renaming it aside and
                            unlinking what was moved only if it is the checked inode (else it is
                            renamed back), never by unlinking the name.
    .bootwatch-aside.<pid>.<n>.<name>
                            a restored copy being deleted (above). One left by a killed run is
                            renamed back to <name> (never over a file that has that name now:
                            then both stay, with a warning) by clean, and the full pass of the
                            daemon's start and of scan. Never deleted.
    .<name>.boomrestored    boom's marker of a restored file, created before the file. Removed
                            with the restored file, or alone once the file is not the one
                            bootwatch wrote, or once that file is gone if the restore made the
                            marker (the record says so; one it found there stays). A marker
                            bootwatch has no record for (boom's) never makes it delete
                            anything, and is left for boom. Only an empty regular file is
                            removed as a marker.

Crash ordering: an image is renamed into place before the index that lists it is written, and it
is deleted only after the index that drops it is written. A crash between the two leaves an
orphan image (harmless; clean removes it), never an index entry without its image.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from bootwatch import linux
from bootwatch.atomic import TempFile, fsync_directory, write_all, write_atomically
from bootwatch.cache.hashing import Cancelled, Digest, hash_file
from bootwatch.cache.index import CacheIndex, is_image_id
from bootwatch.cache.proc import flock_holders
from bootwatch.errors import (
    BootwatchError,
    CacheMissingError,
    CacheReadOnlyError,
    DaemonRunningError,
    FileTooLargeError,
    IndexCorruptError,
    IndexMissingError,
    NotRegularFileError,
    StorageError,
    UnsafeDirectoryError,
    describe_oserror,
    format_size,
    storage_error,
)
from bootwatch.safety import (
    check_private_fd,
    file_kind,
    listing,
    open_private_directory,
    open_private_subdirectory,
    open_regular,
    read_bounded,
    read_regular,
)

INDEX_NAME = "cacheindex.json"
TEMP_PREFIX = ".bootwatch-tmp."
LOCK_NAME = ".bootwatch.lock"
TEMP_DIR = ".tmp"
IMAGE_SUFFIX = ".img"
LINKS_DIR = "links"
LOST_FOUND_DIR = "lost+found"
REFERENCES_NAME = ".bootwatch-references"
SIGNATURES_NAME = ".bootwatch-signatures"  # see signatures.py
CORRUPT_PREFIX = INDEX_NAME + ".corrupt-"
SUPERSEDED_SUFFIX = ".superseded"
MARKER_SUFFIX = ".boomrestored"

log = logging.getLogger("bootwatch.cache.store")
_WARNED: set[Path] = set()  # see CacheStore.warn_once

# boom writes the index in place: a reader may catch it half-written. Retry before calling it corrupt.
READ_RETRY_DELAYS = (0.01, 0.03, 0.1)

# The largest index bootwatch reads. An index costs some 500 bytes a path (boom's entries and
# bootwatch's signatures and digests: 10,000 paths are 5 MB), so 64 MiB holds over 100,000 paths,
# a thousand times a boot directory's. A larger file is no index bootwatch or boom wrote, and
# reading it (four times, with the retries; a sparse file of terabytes costs nothing to make)
# would take the memory of the host: it is corrupt, as an index that fails to parse.
MAX_INDEX_SIZE = 64 << 20
# The derived files (.bootwatch-signatures, .bootwatch-references; .bootwatch-scan-proof is
# read by scanproof.py with a bound of its own) hold less than the index they
# derive from, or the paths the entries name; a larger one is ignored as a torn one is.
MAX_DERIVED_SIZE = MAX_INDEX_SIZE


log = logging.getLogger("bootwatch.cache.store")

_ALL_IMAGE_IDS = re.compile(r"(?:[0-9a-f]{40}\n)*[0-9a-f]{40}|")


def _image_ids(stems: list[str]) -> set[str]:
    """The stems that are image ids: one regex over all of them in the common case (a cache may
    hold 10,000 images), instead of one call per name."""
    if _ALL_IMAGE_IDS.fullmatch("\n".join(stems)):
        return set(stems)
    return {stem for stem in stems if is_image_id(stem)}


def index_digest(data: bytes) -> str:
    """The SHA1 of the index file's bytes: what ``.bootwatch-signatures`` is keyed by (see signatures.py)."""
    return hashlib.sha1(data).hexdigest()


def chunked_sha1(f: BinaryIO, *, limit: int, name: str | Path) -> str:
    """:func:`index_digest` of what is left to read in the unbuffered ``f``, without holding it
    all; more than ``limit`` bytes raise :class:`FileTooLargeError` naming ``name``."""
    digest = hashlib.sha1()
    buffer = bytearray(1 << 18)
    view = memoryview(buffer)
    total = 0
    fd = f.fileno()
    while True:
        n = os.readv(fd, [buffer])
        if not n:
            return digest.hexdigest()
        total += n
        if total > limit:
            raise FileTooLargeError(name, limit)
        digest.update(view[:n])


def not_a_temp_file(kind: str) -> str:
    """Why a non-regular file named like a temp file is left alone (see :meth:`CacheStore.warn_once`)."""
    return (f"a {kind} named like a bootwatch temp file; bootwatch makes only regular files there, so it is "
            "not a leftover of bootwatch's and is left alone (remove it by hand if nothing needs it)")


def cannot_remove_temp_file(error: OSError) -> str:
    """Why a stale temp file stays (see :meth:`CacheStore.remove_temp_file`)."""
    return (f"cannot remove this temp file left by an interrupted writer "
            f"({os.strerror(error.errno).lower() if error.errno else error}); left in place")


def restored_marker_name(path: str) -> str:
    """boom's marker beside a restored boot file: ``.<basename>.boomrestored`` (see the protocol)."""
    return f".{path.rsplit('/', 1)[-1]}{MARKER_SUFFIX}"


def marker_path_of(path: str) -> str:
    """The boom-style path of the marker beside the boom-style ``path``."""
    return f"{path[:path.rfind('/') + 1]}{restored_marker_name(path)}"


def superseded_mark_name(copy_name: str) -> str:
    """The name of the mark that supersedes the kept copy ``copy_name`` (see the protocol)."""
    return f".{copy_name}{SUPERSEDED_SUFFIX}"


def sync_filesystem(directory: Path) -> None:
    """``syncfs(2)``: write back every dirty page of the filesystem that holds ``directory``.

    One call replaces an fsync per file when a batch wrote many images. Since Linux 5.8 it
    reports a writeback error that happened on the filesystem since the file was opened (errseq),
    so a failed write of any image of the batch fails the batch.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sync_filesystem_of(fd, directory)
    finally:
        os.close(fd)


def sync_filesystem_of(fd: int, name: Path) -> None:
    """:func:`sync_filesystem` of the filesystem that holds the open file ``fd`` (``name`` for errors)."""
    linux.syncfs(fd, name)


class PendingImages:
    """Image temp files written in one transaction, made durable and renamed into place together.

    Writing 200 images one by one costs 400 fsyncs (the file, then the directory); a batch
    needs one ``syncfs`` (or one fsync for a single image), the renames, and one directory fsync.
    Until :meth:`flush` nothing carries a final name, so a crash leaves only temp files, which the
    next holder of the lock removes.
    """

    def __init__(self, directory: Path | CacheStore) -> None:
        """``directory``: a :class:`CacheStore`, whose lock the caller holds: the temp files are then
        in its ``.tmp`` and are renamed relative to its descriptors, not by path."""
        self.store = directory if isinstance(directory, CacheStore) else None
        self.directory = directory.directory if isinstance(directory, CacheStore) else directory
        self.files: list[tuple[Path, Path]] = []  # (temp path, final path)

    def __len__(self) -> int:
        return len(self.files)

    def add(self, temp: Path, final: Path) -> None:
        self.files.append((temp, final))

    def flush(self) -> None:
        if not self.files:
            return
        temp_fd, dir_fd = (self.store.temp_fd, self.store.fd) if self.store is not None else (None, None)
        try:
            if len(self.files) == 1:
                fd = os.open(self._name(self.files[0][0]), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=temp_fd)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            elif dir_fd is not None:
                sync_filesystem_of(dir_fd, self.directory)
            else:
                sync_filesystem(self.directory)
        except OSError as e:
            # ENOSPC or EIO at writeback: the data never reached the disk. Nothing is renamed.
            final = self.files[0][1] if len(self.files) == 1 else self.directory
            self.discard()
            raise storage_error(e, final, "cannot make the new image durable; it was not cached") from None
        if self.store is not None and not self.store.index_exists():
            # The first images of a new cache: an empty index goes first, so that images without an
            # index always mean a lost index (see the protocol), never a new cache.
            try:
                self.store.write_index(CacheIndex())
            except BaseException:
                self.discard()
                raise
        try:
            for temp, final in self.files:
                os.rename(self._name(temp), self._name(final), src_dir_fd=temp_fd, dst_dir_fd=dir_fd)
            self.files.clear()
            if dir_fd is not None:
                os.fsync(dir_fd)
            else:
                fsync_directory(self.directory)
        except OSError as e:
            self.discard()
            raise storage_error(e, self.directory, "cannot put the new image in place") from None

    def _name(self, path: Path) -> str:
        return path.name if self.store is not None else str(path)

    def discard(self) -> None:
        if not self.files:
            return  # (and .tmp/ is not made for nothing: a dry run writes nothing)
        temp_fd = self.store.temp_fd if self.store is not None else None
        for temp, _ in self.files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._name(temp), dir_fd=temp_fd)
        self.files.clear()


class LockWaiter:
    """Told about a wait for the writers' lock (see :meth:`CacheStore.locked`), and asked whether
    to give it up: once ``cancel`` is set the wait ends with :class:`~bootwatch.cache.hashing.Cancelled`
    (the daemon is stopping; a lock held by someone else must not hold up its stop)."""

    def __init__(self, cancel: threading.Event | None = None) -> None:
        self.cancel = cancel

    def give_up(self) -> bool:
        """Checked before every attempt to take the lock."""
        return self.cancel is not None and self.cancel.is_set()

    def waiting(self, lock_fd: int) -> None:
        """Called every 100 ms while another holder keeps the lock open at ``lock_fd``
        (:func:`bootwatch.cache.proc.flock_holders` names it)."""

    def acquired(self) -> None:
        """Called once when the lock is had after a wait."""


class CacheStore:
    """One cache directory: its index, its images, its lock.

    The directory is opened once, checked with all the directories above it (see
    :func:`bootwatch.safety.open_private_directory`), and every later operation works relative to
    that descriptor: a directory swapped in under the same name afterwards is never read or written.
    The descriptor is held until :meth:`close` (or the end of a ``with`` block). The paths below
    (:attr:`index_path`, :meth:`image_path`...) only name files in messages and for other programs.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._fd: int | None = None
        # .tmp, checked again by each locked(). Threads without the lock (listings) and a writer
        # of another thread may hold it at any time: it is closed only by close(), and one that
        # a later check finds replaced is kept open in _retired_fds until then, so its number is
        # never reused for another file under them.
        self._temp_fd: int | None = None
        self._retired_fds: list[int] = []
        self._temp_lock = threading.Lock()
        self._opening = threading.Lock()
        self._too_large_derived: set[str] = set()  # derived files found too large, warned about

    def __enter__(self) -> CacheStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._temp_lock:
            fds, self._retired_fds = [self._temp_fd, *self._retired_fds, self._fd], []
            self._temp_fd = self._fd = None
        for fd in fds:
            if fd is not None:
                os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @property
    def fd(self) -> int:
        """The checked descriptor of the cache directory; opened (without creating it) on first use."""
        if self._fd is None:
            self.check()
        assert self._fd is not None
        return self._fd

    @property
    def temp_fd(self) -> int:
        """The checked descriptor of ``.tmp`` (made if need be); checked again by each
        :meth:`locked`, and valid until :meth:`close`."""
        with self._temp_lock:
            if self._temp_fd is None:
                self._temp_fd = self._subdirectory(TEMP_DIR, create=True)
            assert self._temp_fd is not None
            return self._temp_fd

    def _check_temp_dir(self) -> None:
        """Check ``.tmp`` again (made if need be) for a new holder of the lock. The same directory
        keeps its descriptor; another one found at the name (a check passed, so it is ours and
        private) is used from now on, and the old descriptor stays open until :meth:`close`:
        another thread may be listing through it."""
        fresh = self._subdirectory(TEMP_DIR, create=True)
        assert fresh is not None
        with self._temp_lock:
            held = self._temp_fd
            if held is not None:
                old, new = os.fstat(held), os.fstat(fresh)
                if (old.st_dev, old.st_ino) == (new.st_dev, new.st_ino):
                    os.close(fresh)
                    return
                self._retired_fds.append(held)
            self._temp_fd = fresh

    # ---------------------------------------------------------------- names

    @property
    def index_path(self) -> Path:
        return self.directory / INDEX_NAME

    @property
    def temp_dir(self) -> Path:
        return self.directory / TEMP_DIR

    @property
    def links_dir(self) -> Path:
        return self.directory / LINKS_DIR

    @property
    def lost_found_dir(self) -> Path:
        return self.directory / LOST_FOUND_DIR

    def image_path(self, image_id: str) -> Path:
        if not is_image_id(image_id):
            raise BootwatchError(f"{image_id!r} is not an image id")
        return self.directory / f"{image_id}{IMAGE_SUFFIX}"

    # ---------------------------------------------------------------- safety and locking

    def check(self, *, create: bool = False) -> None:
        """Open the cache directory (first call), or check again that the one opened is still safe
        and still the one at its path; refuse an unsafe one.

        The directory and every directory above it are checked each time (see
        :func:`open_private_directory`). A cache directory that was replaced since it was
        opened, or removed since, is refused: this object keeps working in the one it checked,
        and never switches.
        """
        with self._opening:
            # Made only by the first open: one removed since is not made again (that new
            # directory would be refused as replaced, after it had been made for nothing).
            fd = open_private_directory(self.directory, create=create and self._fd is None)
            if self._fd is None:
                self._fd = fd
                return
            try:
                held, now = os.fstat(self._fd), os.fstat(fd)
                check_private_fd(self._fd, self.directory)
            finally:
                os.close(fd)
            if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
                raise UnsafeDirectoryError("is not the directory bootwatch opened: it was replaced meanwhile",
                                           path=self.directory, hint="restart bootwatch to use the new directory")

    def check_existing(self) -> None:
        """:meth:`check`, for a command that only reads: a cache directory that does not exist is
        no cache yet (:class:`CacheMissingError`), never an empty one, and is not created."""
        if self._fd is None and not os.path.lexists(self.directory):
            raise CacheMissingError(self.directory)
        self.check()

    def links_fd(self, *, create: bool) -> int | None:
        """``links/`` (pins), opened relative to the cache directory and checked as it is; None if
        absent and not ``create``. The caller closes it."""
        return self._subdirectory(LINKS_DIR, create=create)

    def _subdirectory(self, name: str, *, create: bool) -> int | None:
        """``.tmp``, ``links`` or ``lost+found``, opened relative to the cache directory and checked
        as it is (a real directory, not a symlink, ours, private); None if absent and not ``create``."""
        return open_private_subdirectory(self.fd, name, self.directory / name, create=create)

    @contextlib.contextmanager
    def locked(self, *, create: bool = True, remove_stale: bool = True,
               waiter: LockWaiter | None = None,
               removed: list[Path] | None = None) -> Iterator[set[str] | None]:
        """Hold the writers' lock. Stale temp files left by dead writers are removed on entry.

        ``remove_stale`` False leaves them for a caller that reports them (clean, fsck).
        ``waiter`` is told every 100 ms while another process holds the lock, and once when the
        lock is had after a wait (see :class:`LockWaiter`): the daemon uses it to report who
        holds the lock, to decide what the wait means for systemd's watchdog, and to give the
        wait up when it stops (:class:`~bootwatch.cache.hashing.Cancelled`). Without one the wait is
        a plain blocking flock. With
        ``remove_stale`` the block gets the ids of the images on disk, from the same single
        listing of the directory (a large cache is listed once per transaction, not twice);
        else None. The stale temp files removed are appended to ``removed``, if given.
        """
        self.check(create=create)
        try:
            fd = self._open_lock_file()
        except OSError as e:
            if e.errno == errno.EROFS:
                raise CacheReadOnlyError(self.directory, "cannot take the writers' lock") from None
            raise
        try:
            self._wait_for_lock(fd, waiter)
            self._check_temp_dir()
            image_ids: set[str] | None = None
            if remove_stale:
                image_ids, temps = self._list_directory()
                for path in temps:
                    if self.remove_temp_file(path) and removed is not None:
                        removed.append(path)
            yield image_ids
        finally:
            os.close(fd)  # closing the last fd drops the flock

    def temp_file(self, mode: int = 0o600) -> TempFile:
        """A new temp file in ``.tmp``, made relative to its descriptor. The caller holds the lock."""
        return TempFile(self.temp_dir, TEMP_PREFIX, mode, dir_fd=self.temp_fd)

    def commit_image(self, tmp: TempFile, image_id: str) -> None:
        """Make a complete temp file the image ``image_id`` (fsync, rename, directory fsync)."""
        tmp.commit(self.image_path(image_id), final_dir_fd=self.fd)

    @contextlib.contextmanager
    def locked_read_only(self, waiter: LockWaiter | None = None) -> Iterator[None]:
        """The writers' lock of a cache on a read-only file system, for a transaction that only
        reads the cache (a restore reads an image and writes into the boot directory), and of a
        dry run, which writes nothing: not even the lock file.

        flock needs no write access, so the lock is taken on a read-only descriptor: a writer
        that reaches the same file system through another, writable mount still excludes us.
        Without a lock file no writer has used the cache (every writer creates it), so there is
        nobody to exclude; and a restore verifies the hash of every byte it copies in any case.
        """
        self.check()
        try:
            fd = os.open(LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            yield
            return
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BootwatchError("is not a regular file", path=self.directory / LOCK_NAME)
            self._wait_for_lock(fd, waiter)
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _wait_for_lock(fd: int, waiter: LockWaiter | None) -> None:
        if waiter is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        waited = False
        while True:
            if waiter.give_up():
                raise Cancelled("stopped while waiting for the cache lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = True
                waiter.waiting(fd)
                time.sleep(0.1)
        if waited:
            waiter.acquired()

    def hold_daemon_lock(self) -> int:
        """Take the daemon lock (see the protocol above) and return its descriptor, to keep open
        for the daemon's life: closing it releases the lock, and so does the process's death.

        Refused with a :class:`DaemonRunningError` naming the running daemon when another
        process holds it.
        """
        # A description of its own (not a dup), so that its flock is this call's alone.
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = flock_holders(fd)
            os.close(fd)
            running = ", ".join(h.describe() for h in holders) if holders else "PID unknown"
            raise DaemonRunningError(f"another bootwatch daemon is running on this cache: {running}; "
                                     "not starting a second one", path=self.directory) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_lock_file(self) -> int:
        """The lock file, created if need be; a FIFO or a device planted under its name is refused."""
        path = self.directory / LOCK_NAME
        fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=self.fd)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise NotRegularFileError(path, file_kind(mode), hint="remove it; bootwatch creates its lock file itself")
        return fd

    def _list_directory(self) -> tuple[set[str], list[Path]]:
        """One pass over the directory: the ids of the ``<sha1>.img`` regular files, and the temp files."""
        stems: list[str] = []
        temps: list[Path] = []
        name_length = 40 + len(IMAGE_SUFFIX)
        with listing(self.fd) as it:
            for entry in it:
                name = entry.name
                if len(name) == name_length and name.endswith(IMAGE_SUFFIX):
                    if entry.is_file(follow_symlinks=False):
                        stems.append(name[:40])
                # A temp file outside .tmp/ is as stale as one in it.
                elif name.startswith(TEMP_PREFIX) and self._is_temp_file(entry, self.directory / name):
                    temps.append(self.directory / name)
        with self._temp_lock:
            held = self._temp_fd  # valid until close(), even if another thread's locked() replaces it
        temp_fd = held if held is not None else self._subdirectory(TEMP_DIR, create=False)
        if temp_fd is not None:
            try:
                with listing(temp_fd) as it:
                    temps.extend(self.temp_dir / entry.name for entry in it if entry.name.startswith(TEMP_PREFIX)
                                 and self._is_temp_file(entry, self.temp_dir / entry.name))
            finally:
                if held is None:
                    os.close(temp_fd)
        return _image_ids(stems), temps

    def _is_temp_file(self, entry: os.DirEntry[str], path: Path) -> bool:
        """Whether ``entry``, named like a temp file, can be one: bootwatch makes only regular files
        (``O_CREAT | O_EXCL``). Anything else there is not its leftover: warned about, left alone."""
        try:
            if entry.is_file(follow_symlinks=False):
                return True
            kind = file_kind(entry.stat(follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return False
        except OSError as e:
            kind = f"file that cannot be looked at ({os.strerror(e.errno).lower() if e.errno else e})"
        self.warn_once(path, not_a_temp_file(kind))
        return False

    @staticmethod
    def warn_once(path: Path, message: str) -> None:
        """Log ``path: message`` as a warning the first time this process meets ``path``: a thing
        that every transaction finds again (a directory where temp files go) is said once, not per
        batch of the daemon, nor twice by one command."""
        if path not in _WARNED:
            _WARNED.add(path)
            log.warning("%s: %s", path, message)

    def _regular_file_names(self) -> set[str]:
        """The names of the regular files in the directory, from ``d_type`` (no stat per file)."""
        with listing(self.fd) as it:
            return {entry.name for entry in it if entry.is_file(follow_symlinks=False)}

    def remove_temp_file(self, path: Path) -> bool:
        """Unlink one of :meth:`stale_temp_files` relative to the opened directories; False if it
        is gone, or cannot be removed (warned about once, naming it: a leftover temp file is
        harmless, and must not stop the writer that found it)."""
        try:
            if path.parent == self.temp_dir:
                os.unlink(path.name, dir_fd=self.temp_fd)
            else:
                os.unlink(path.name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        except OSError as e:
            self.warn_once(path, cannot_remove_temp_file(e))
            return False
        return True

    def has_temp_files(self) -> bool:
        """Whether ``.tmp/`` holds a temp file (one listing of a directory that is nearly always empty)."""
        temp_fd = self._subdirectory(TEMP_DIR, create=False)
        if temp_fd is None:
            return False
        try:
            with listing(temp_fd) as it:
                return any(entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False)
                           for entry in it)
        finally:
            os.close(temp_fd)

    def stale_temp_files(self) -> list[Path]:
        """Temp files present now. Only meaningful to a holder of the lock: then all are stale."""
        return sorted(self._list_directory()[1])

    # ---------------------------------------------------------------- the index

    def index_exists(self) -> bool:
        try:
            os.stat(INDEX_NAME, dir_fd=self.fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    def _open_index(self) -> int | None:
        try:
            return open_regular(INDEX_NAME, dir_fd=self.fd, display=self.index_path, max_size=MAX_INDEX_SIZE)
        except FileNotFoundError:
            return None
        except FileTooLargeError:
            raise self._index_too_large() from None
        except NotRegularFileError as e:
            # Not "no index": what the cache holds is unknown until a person looks.
            e.hint = "nothing was changed; move it aside (bootwatch and boom write a regular file there)"
            raise
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise IndexCorruptError("is a symlink; refusing to read it", path=self.index_path) from None
            raise BootwatchError(describe_oserror(e)) from None

    @contextlib.contextmanager
    def _index_file(self, fd: int, *, buffering: int) -> Iterator[BinaryIO]:
        """The opened index as a file object; an error names the index, not the descriptor
        (EISDIR from a directory named cacheindex.json, EIO)."""
        try:
            f = os.fdopen(fd, "rb", buffering=buffering)
        except OSError as e:
            os.close(fd)
            raise BootwatchError(describe_oserror(e, path=self.index_path)) from None
        with f:
            try:
                yield f
            except FileTooLargeError:  # it grew since it was opened
                raise self._index_too_large() from None
            except OSError as e:
                raise BootwatchError(describe_oserror(e, path=self.index_path)) from None

    def _index_too_large(self) -> IndexCorruptError:
        return IndexCorruptError(f"is larger than {format_size(MAX_INDEX_SIZE)}, far more than any index bootwatch "
                                 "or boom writes; not reading it", path=self.index_path)

    def index_too_large(self) -> bool:
        """Whether the index file is larger than bootwatch reads (:data:`MAX_INDEX_SIZE`)."""
        try:
            return os.stat(INDEX_NAME, dir_fd=self.fd, follow_symlinks=False).st_size > MAX_INDEX_SIZE
        except FileNotFoundError:
            return False

    def read_index_bytes(self) -> bytes | None:
        fd = self._open_index()
        if fd is None:
            return None
        with self._index_file(fd, buffering=0) as f:
            return read_bounded(f.fileno(), MAX_INDEX_SIZE, self.index_path)

    def index_file_digest(self) -> str | None:
        """The SHA1 of the index file's bytes (see signatures.py); None if there is no index.

        Read in chunks through one buffer: a pass that only needs the digest does not pay for
        a 5 MB copy of the index.
        """
        fd = self._open_index()
        if fd is None:
            return None
        with self._index_file(fd, buffering=0) as f:
            return chunked_sha1(f, limit=MAX_INDEX_SIZE, name=self.index_path)

    def load_index(self) -> CacheIndex:
        """Read and validate the index. No index and no image is a new, empty cache; images
        without an index are a lost index (:class:`IndexMissingError`), never an empty cache."""
        return self.load_index_and_digest()[0]

    def load_index_and_digest(self) -> tuple[CacheIndex, str | None]:
        """:meth:`load_index`, and the SHA1 of the bytes it was parsed from (None: no index file)."""
        last: IndexCorruptError | None = None
        for delay in (*READ_RETRY_DELAYS, None):
            data = self.read_index_bytes()
            if data is None:
                images = self.image_ids_on_disk()
                if not images:
                    return CacheIndex(), None  # a new cache
                # A new cache's first writer puts an index in place before any image (see
                # PendingImages.flush): read again before calling it lost.
                data = self.read_index_bytes()
                if data is None:
                    raise IndexMissingError(self.index_path, len(images))
            try:
                return CacheIndex.from_json(data, source=self.index_path), index_digest(data)
            except IndexCorruptError as e:
                last = e
                if delay is not None:
                    time.sleep(delay)
        assert last is not None
        raise last

    def write_index(self, index: CacheIndex) -> str:
        """Replace the index atomically and durably, and return the SHA1 of its bytes. The caller holds the lock."""
        data = index.to_json()
        try:
            self._replace(INDEX_NAME, data, durable=True)
        except OSError as e:
            # os.write() errors carry no file name: without this, a full disk while writing the
            # index reached the user as a bare "no space left on device" that names no file.
            # The temp file is gone (TempFile) and the old index is untouched.
            raise storage_error(e, self.index_path, "cannot write the new index (the old index is unchanged)") from None
        return index_digest(data)

    def write_index_making_room(self, index: CacheIndex) -> str:
        """:meth:`write_index`; on a full file system, first delete the derived signatures file
        (as large as the index, and only a saving of work) and try once more."""
        try:
            return self.write_index(index)
        except StorageError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            try:
                os.unlink(SIGNATURES_NAME, dir_fd=self.fd)
            except OSError:
                raise e from None
            return self.write_index(index)

    def read_derived(self, name: str) -> bytes | None:
        """A file derived from the index (see signatures.py); None if it is missing or unreadable.

        Not a regular file (a FIFO planted there) is as good as missing, never a read that blocks;
        so is a cache directory that does not exist yet, and a file larger than
        :data:`MAX_DERIVED_SIZE` (said in one line: nothing bootwatch writes is that large).
        """
        if self._fd is None and not os.path.lexists(self.directory):
            return None
        try:
            return read_regular(name, dir_fd=self.fd, limit=MAX_DERIVED_SIZE, display=self.directory / name)
        except FileTooLargeError as e:
            if name not in self._too_large_derived:  # said once: a pass reads it twice
                self._too_large_derived.add(name)
                log.warning("%s; ignored: it is derived data, written again by the next writer", e)
            return None
        except OSError:  # EISDIR, EIO: as good as missing
            return None

    def write_derived(self, name: str, data: bytes, *, durable: bool = False) -> None:
        """Replace a derived file by rename, without fsync unless ``durable``: a torn one is
        ignored by its readers.

        The caller holds the lock. A failure (a full disk, say) is left for the next writer: the
        file only saves work (or, durable, remembers what a later run compares with).
        """
        with contextlib.suppress(OSError):
            self._replace(name, data, durable=durable)

    def _replace(self, name: str, data: bytes, *, durable: bool) -> None:
        """Replace ``name`` in the cache directory with ``data`` (mode 0644: boom and other tools
        read the index) through a temp file in ``.tmp``. The caller holds the lock."""
        write_atomically(self.directory / name, data, mode=0o644, prefix=TEMP_PREFIX, durable=durable,
                         final_dir_fd=self.fd, temp_dir=self.temp_dir, temp_dir_fd=self.temp_fd)

    def keep_corrupt_copy(self, data: bytes) -> Path:
        """Keep ``data`` (the bytes of a corrupt index) as ``cacheindex.json.corrupt-<UTC time>``.

        A copy, written and fsynced before anything is rebuilt: the index stays at its name.
        An unsuperseded copy with the same bytes (left by a killed repair) is kept instead of
        making another. The caller holds the lock.
        """
        for existing in self.unsuperseded_corrupt_copies():
            with contextlib.suppress(OSError):
                if self.read_corrupt_copy(existing) == data:
                    return existing
        with self.temp_file() as tmp:
            os.fchmod(tmp.fd, 0o600)
            write_all(tmp.fd, data)
            for target in self._corrupt_copy_names():
                # fsync, link (never over an earlier copy or anything else there), dir fsync
                tmp.commit(target, replace=False, final_dir_fd=self.fd)
                return target
        raise BootwatchError("cannot find a free name for a copy of the corrupt index", path=self.directory)

    def _corrupt_copy_names(self) -> Iterator[Path]:
        """Names for a new kept copy: ``cacheindex.json.corrupt-<UTC time>[.<n>]``, each free, and
        free of a superseded mark too: a mark already there (left by a clock that went back, or
        planted) would supersede the new copy from its birth, and end the block on deletions it
        stands for before any repair merged it."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for n in range(1000):
            name = f"{CORRUPT_PREFIX}{stamp}{'' if n == 0 else f'.{n}'}"
            if not self._exists(name) and not self._exists(superseded_mark_name(name)):
                yield self.directory / name

    def keep_corrupt_link(self) -> Path:
        """:meth:`keep_corrupt_copy` of an index too large to read (:meth:`index_too_large`): the
        copy is a hard link to it, made without reading a byte or using any space. The rebuilt
        index replaces the name by rename, so the link keeps what was there. The caller holds
        the lock."""
        for copy in self._corrupt_copy_names():
            try:
                os.link(INDEX_NAME, copy.name, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
            except FileExistsError:
                continue
            os.fsync(self.fd)
            return copy
        raise BootwatchError("cannot find a free name for a copy of the corrupt index", path=self.directory)

    def read_corrupt_copy(self, copy: Path) -> bytes:
        """The bytes of a kept copy of a corrupt index (in the cache directory), as bounded as the
        index's: a larger one raises :class:`FileTooLargeError`."""
        return read_regular(copy.name, dir_fd=self.fd, limit=MAX_INDEX_SIZE, display=copy)

    def index_is_symlink(self) -> bool:
        return self.is_symlink(INDEX_NAME)

    def is_symlink(self, name: str) -> bool:
        """Whether ``name`` in the cache directory is a symlink (never followed)."""
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return False

    def keep_corrupt_symlink(self) -> Path:
        """:meth:`keep_corrupt_copy` of an index that is a symlink: the copy is a symlink to the
        same target, made without following it. The caller holds the lock."""
        target = os.readlink(INDEX_NAME, dir_fd=self.fd)
        for existing in self.unsuperseded_corrupt_copies():
            with contextlib.suppress(OSError):
                if os.readlink(existing.name, dir_fd=self.fd) == target:
                    return existing
        for copy in self._corrupt_copy_names():
            try:
                os.symlink(target, copy.name, dir_fd=self.fd)
            except FileExistsError:
                continue
            os.fsync(self.fd)
            return copy
        raise BootwatchError("cannot find a free name for a copy of the corrupt index", path=self.directory)

    def unsuperseded_corrupt_copies(self) -> list[Path]:
        """The kept copies of corrupt indexes that no completed repair superseded (see the protocol)."""
        names: set[str] = set()
        marks: set[str] = set()  # only a regular file is a mark: bootwatch makes nothing else there
        with listing(self.fd) as it:
            for entry in it:
                names.add(entry.name)
                if entry.name.endswith(SUPERSEDED_SUFFIX) and entry.is_file(follow_symlinks=False):
                    marks.add(entry.name)
        return sorted(self.directory / name for name in names
                      if name.startswith(CORRUPT_PREFIX) and superseded_mark_name(name) not in marks)

    def mark_superseded(self, copy: Path) -> None:
        """Record that a completed repair merged ``copy`` into the index now in place.

        The mark is created, never opened: ``O_CREAT | O_EXCL`` fails on whatever is at its name
        (a FIFO there would block an ``O_WRONLY`` open for ever, with the lock held). A regular
        file there already is a mark; anything else is refused with a
        :class:`NotRegularFileError` naming it, and the copy stays unsuperseded.
        """
        name = superseded_mark_name(copy.name)
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_NOCTTY | os.O_CLOEXEC, 0o600, dir_fd=self.fd))
        except FileExistsError:
            mode = os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode
            if not stat.S_ISREG(mode):
                raise NotRegularFileError(self.directory / name, file_kind(mode),
                                          hint=f"the copy {copy.name} stays unsuperseded, so no image is deleted; "
                                               "remove what is there and run 'bootwatch fsck --repair' again") \
                    from None
        os.fsync(self.fd)

    def _exists(self, name: str, dir_fd: int | None = None) -> bool:
        try:
            os.stat(name, dir_fd=self.fd if dir_fd is None else dir_fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    # ---------------------------------------------------------------- images

    def image_ids_on_disk(self) -> list[str]:
        """Every ``<sha1>.img`` regular file in the directory, sorted (temp files are not looked for)."""
        name_length = 40 + len(IMAGE_SUFFIX)
        stems = [name[:40] for name in self._regular_file_names()
                 if len(name) == name_length and name.endswith(IMAGE_SUFFIX)]
        return sorted(_image_ids(stems))

    def has_images(self, image_ids: Iterable[str]) -> bool:
        """Whether each of ``image_ids`` is a regular ``<id>.img`` file: one listing for them all,
        and set operations instead of a look at each name."""
        return {image_id + IMAGE_SUFFIX for image_id in image_ids} <= self._regular_file_names()

    def image_stat(self, image_id: str) -> os.stat_result | None:
        try:
            st = os.stat(self.image_path(image_id).name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def has_image(self, image_id: str) -> bool:
        return self.image_stat(image_id) is not None

    def open_image(self, image_id: str) -> int:
        """A descriptor of the image, for reading; not a regular file raises :class:`NotRegularFileError`."""
        path = self.image_path(image_id)
        return open_regular(path.name, dir_fd=self.fd, display=path)

    def hash_image(self, image_id: str, *, cancel: threading.Event | None = None) -> Digest:
        """:func:`bootwatch.cache.hashing.hash_file` of the image, opened relative to the cache directory."""
        fd = self.open_image(image_id)
        try:
            return hash_file(fd, path=self.image_path(image_id), cancel=cancel)[0]
        finally:
            os.close(fd)

    def delete_image(self, image_id: str) -> bool:
        """Unlink an image. The caller holds the lock and has already written an index without it."""
        try:
            os.unlink(self.image_path(image_id).name, dir_fd=self.fd)
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            raise storage_error(e, self.image_path(image_id), "cannot delete the image") from None

    def move_to_lost_found(self, image_id: str, suffix: str = "") -> Path:
        """Keep an image out of clean's reach for an administrator to look at.

        ``lost+found/`` is checked as the cache directory is (a symlink there would carry images
        out of the cache) and the rename goes between the two descriptors.
        """
        found_fd = self._subdirectory(LOST_FOUND_DIR, create=True)
        assert found_fd is not None
        try:
            name = f"{image_id}{IMAGE_SUFFIX}{suffix}"
            n = 0
            while self._exists(name, found_fd):  # never replace what an earlier repair kept
                n += 1
                name = f"{image_id}{IMAGE_SUFFIX}{suffix}.{n}"
            os.rename(self.image_path(image_id).name, name, src_dir_fd=self.fd, dst_dir_fd=found_fd)
            os.fsync(found_fd)
            os.fsync(self.fd)
        finally:
            os.close(found_fd)
        return self.lost_found_dir / name

    def pinned_image_ids(self) -> set[str]:
        """Ids that some link in ``links/`` holds. Clean never deletes these; gc decides liveness."""
        links_fd = self._subdirectory(LINKS_DIR, create=False)
        if links_fd is None:
            return set()
        try:
            with listing(links_fd) as it:
                names = [entry.name for entry in it]
        finally:
            os.close(links_fd)
        return {name.split(".", 1)[0] for name in names if is_image_id(name.split(".", 1)[0])}

