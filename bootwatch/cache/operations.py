"""The cache operations: add, remove, restore, list/show, verify, clean and fsck.

This is the library that the command line, the daemon and the scheduled jobs share. Every
mutation runs inside :meth:`BootCache.transaction`, which holds the writers' lock, loads the index
once, and writes it at most once, atomically, when the block ends. Images that the new index no
longer lists are deleted only after that write (see the protocol in ``store.py``).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from bootwatch.atomic import TempFile, fsync_directory
from bootwatch.cache import fstab
from bootwatch.cache.fileid import ASIDE_PREFIX, FileIdentity, Removal, identity_at, put_back, remove_if_same
from bootwatch.cache.hashing import Digest, StatSignature, hash_and_copy, hash_file, hash_path
from bootwatch.cache.headroom import HeadroomError, HostHeadroom
from bootwatch.cache.index import CacheIndex, PathMeta, RestoredFile
from bootwatch.cache.proc import process_command, process_writing
from bootwatch.cache.references import References, has_evidence, judge, parse_record, record_of_read
from bootwatch.cache.signatures import write_signatures
from bootwatch.cache.store import (
    REFERENCES_NAME,
    CacheStore,
    LockWaiter,
    PendingImages,
    cannot_remove_temp_file,
    not_a_temp_file,
    restored_marker_name,
)
from bootwatch.entries.inventory import GRUB_CONFIGS, HOST_BOOT, Inventory, InventorySettings, read_inventory
from bootwatch.entries.layout import ENTRIES_DIR
from bootwatch.entries.model import EntrySource
from bootwatch.entries.uki import UKI_DIR
from bootwatch.enums import TextEnum
from bootwatch.errors import (
    STORAGE_ERRNOS,
    BootwatchError,
    CacheReadOnlyError,
    ContentChangedError,
    DeletionsBlockedError,
    NotRegularFileError,
    OpenForWritingError,
    ReferencesUnknownError,
    UnsafePathError,
    describe_oserror,
    storage_error,
)
from bootwatch.log import NOTICE, Event, boot_entries, log_event, short_id
from bootwatch.safety import file_kind, is_esp_key, name_in_boot, normalize_boot_path, open_regular, resolve_in_boot

if TYPE_CHECKING:
    from bootwatch.config import Config
    from bootwatch.verify import ImageCheck



class PathState(TextEnum):
    """The state of a cached path, by boom's names (what ``list`` shows and ``--json`` writes)."""

    CACHED = "CACHED"  # the boot file and its newest image are there
    RESTORED = "RESTORED"  # as CACHED, and the boot file is a restored copy of that image
    MISSING = "MISSING"  # the image is there, the boot file is not
    BROKEN = "BROKEN"  # the boot file is there, its newest image is not
    UNKNOWN = "UNKNOWN"  # neither is there


RESTORE_TEMP_PREFIX = ".bootwatch-restore."

log = logging.getLogger("bootwatch.cache.operations")


# A restored boot file never gets these: setuid, setgid and sticky bits, group and other write.
RESTORED_MODE_REFUSED = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH


@dataclass(frozen=True)
class RestoredAttributes:
    mode: int
    uid: int
    gid: int


def restored_attributes(meta: PathMeta, directory: os.stat_result, *, euid: int, egid: int) -> RestoredAttributes:
    """The mode and owner a restored boot file gets, from the recorded ones (untrusted: the index).

    - The mode is the recorded permission bits without setuid, setgid, sticky, group write and
      other write: a restored kernel is never a setuid program, nor writable by others.
    - Run as root, the recorded owner is kept if it is root or the owner of the directory the file
      is restored into (who can replace the file anyway); any other uid becomes root. The same for
      the group: root's group or the directory's group, else root's group.
    - Run as another user, the file is that user's (nobody else can be given a file); its group is
      the user's group, or the directory's group if that is the recorded one.
    """
    mode = stat.S_IMODE(meta.mode) & ~RESTORED_MODE_REFUSED
    if euid == 0:
        uid = meta.uid if meta.uid in (0, directory.st_uid) else 0
        gid = meta.gid if meta.gid in (0, directory.st_gid) else 0
    else:
        uid = euid
        gid = meta.gid if meta.gid in (egid, directory.st_gid) else egid
    return RestoredAttributes(mode, uid, gid)


def dangling_link(name: Path) -> str | None:
    """What the symlink ``name`` points to, if ``name`` is a symlink to nothing; else None."""
    try:
        target = os.readlink(name)
    except OSError:  # no such name, or not a symlink
        return None
    return target if not os.path.exists(name) else None


@dataclass(frozen=True)
class Verification:
    """The last verification of an image as the index records it (see CacheIndex.verification).

    ``unchecked``: the last run hashed the image but its content check was cut off by the run's
    bound; it is neither ok nor failed, and has no time (it is verified first at the next run).
    """

    time: float | None  # None: not recorded as a time
    ok: bool
    message: str
    checks: list[dict[str, Any]]  # as recorded (flat objects): written out by --json, never read
    unchecked: bool = False

    @property
    def failed(self) -> bool:
        return not self.ok and not self.unchecked

    @classmethod
    def recorded(cls, index: CacheIndex, image_id: str) -> Verification | None:
        verified = index.verification(image_id)
        if verified is None:
            return None
        return cls(verified["time"], verified["ok"], verified["message"], verified["checks"], verified["unchecked"])

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "ok": self.ok, "unchecked": self.unchecked, "message": self.message,
                "checks": self.checks}


@dataclass(frozen=True)
class PathStatus:
    """What ``list`` and ``show`` report for one cached path."""

    path: str
    image_id: str
    images: list[str]
    state: PathState
    count: int
    image_ts: int
    mode: int
    uid: int
    gid: int
    boot_changed: bool
    image_problem: str | None
    verified: Verification | None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "image_id": self.image_id, "state": self.state, "count": self.count,
            "images": self.images, "image_ts": self.image_ts, "mode": self.mode, "uid": self.uid,
            "gid": self.gid, "boot_changed": self.boot_changed, "image_problem": self.image_problem,
            "verified": self.verified.to_json() if self.verified is not None else None,
        }


class AddOutcome(TextEnum):
    """What adding a boot file did."""

    CACHED = "cached"  # the path's first image
    CHANGED = "changed"  # a new image id for a path cached before
    UNCHANGED = "unchanged"  # the newest image is the file's content already


@dataclass
class AddResult:
    path: str
    image_id: str
    outcome: AddOutcome
    previous_id: str | None = None


@dataclass(frozen=True)
class ImageVerification:
    image_id: str
    paths: list[str]
    ok: bool
    message: str
    checks: list[ImageCheck] = field(default_factory=list)
    missing: bool = False  # the image file was not there when it was to be hashed
    # The image hashed to its id, but its content check was cut off by a deadline (Outcome.INCOMPLETE):
    # not ok, not failed, and recorded without a time (see Transaction.record_verification).
    unchecked: bool = False

    @property
    def failed(self) -> bool:
        return not self.ok and not self.unchecked

    def to_json(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "paths": self.paths, "ok": self.ok, "unchecked": self.unchecked,
                "message": self.message, "checks": [check.to_json() for check in self.checks]}


@dataclass
class CleanReport:
    uncached_paths: list[str] = field(default_factory=list)
    trimmed_images: list[str] = field(default_factory=list)
    deleted_images: list[str] = field(default_factory=list)
    kept_pinned: list[str] = field(default_factory=list)
    removed_restored_copies: list[str] = field(default_factory=list)
    removed_temp_files: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _now() -> int:
    return int(time.time())


class Transaction:
    """The operations a holder of the lock can apply to the loaded index.

    Built by :meth:`BootCache.transaction`; the index is written once when the block ends, and
    only if something changed.
    """

    def __init__(self, cache: BootCache, index: CacheIndex, image_ids: set[str] | None = None,
                 index_digest: str | None = None) -> None:
        self.cache = cache
        self.index = index
        self.index_digest = index_digest  # SHA1 of the index file as loaded; None if there was none
        self._image_ids_at_start = image_ids
        self.dirty = False
        # Set by a full pass: write the signatures file for the index this transaction leaves.
        self.record_signatures = False
        self.unlisted: set[str] = set()
        self.pending = PendingImages(cache.store)
        self.removed_temp_files: list[Path] = []  # stale ones, removed when the lock was taken
        # The cache's file system is read-only: restores go on without recording anything (the
        # next pass with a writable cache records the restored file), every change is refused.
        self.read_only = False
        self._references: References | None = None

    @property
    def references(self) -> References:
        if self._references is None:
            self._references = self.cache.references(self.index)
        return self._references

    def images_on_disk(self) -> set[str]:
        """The ids of the image files, as listed when the lock was taken (a copy for the caller)."""
        if self._image_ids_at_start is not None:
            ids, self._image_ids_at_start = self._image_ids_at_start, None  # only valid before changes
            return ids
        return set(self.cache.store.image_ids_on_disk())

    def refresh_references(self) -> References:
        self._references = None
        return self.references

    def confirm_references(self) -> References:
        """The operator's word (``clean --force``) that references unknown for a judgement from
        history (see :class:`bootwatch.cache.references.References`) are what the entries say now; recorded
        when the transaction ends. A source that cannot be read stays unknown."""
        refs = self.references
        if refs.unknown is not None and refs.confirmable and refs.observed is not None:
            self._references = refs.confirmed()
        return self.references

    # ---------------------------------------------------------------- add

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise CacheReadOnlyError(self.cache.store.directory, what)

    def add(self, path: str, *, recopy: bool = False) -> AddResult:
        """Cache the current content of the boot file ``path``, reading it once.

        ``recopy``: copy it even when its stat signature says its image is cached and a file of
        that name is there (the daemon found that file damaged, and could not set it aside).
        """
        store = self.cache.store
        self._writable(f"cannot cache {path}")
        real = self.cache.boot_file(path)
        try:
            fd = open_regular(real)
        except FileNotFoundError:
            raise BootwatchError("does not exist in the boot directory", path=real) from None
        except NotRegularFileError:
            raise
        except OSError as e:
            problem = describe_oserror(e) if e.filename or not e.errno else os.strerror(e.errno)
            raise BootwatchError(problem, path=real) from None
        with contextlib.ExitStack() as stack:
            stack.callback(os.close, fd)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BootwatchError("is not a regular file", path=real)
            signature = StatSignature.of(st)
            previous = self.index.newest(path) if path in self.index else None
            known = self.index.signatures([path]).newest_image_of(path, st)
            if known is not None and store.has_image(known) and not recopy:
                return AddResult(path, known, AddOutcome.UNCHANGED, previous)
            try:
                with store.temp_file() as tmp:
                    os.fchmod(tmp.fd, 0o644)
                    # A file some process still writes is not cached: OpenForWritingError.
                    digest, after = hash_file(fd, tmp.fd, path=real, cancel=self.cache.cancel)
                    if StatSignature.of(after) != signature:
                        raise ContentChangedError(real, "changed while it was being cached")
                    # Always rename the fresh copy over <id>.img, even when a file of that name and
                    # size exists: its name proves nothing about its content (a rotten orphan, or a
                    # file fsck could not place), and keeping it recorded a corrupt image as cached.
                    # Pins hold their own links to the old inode, so replacing the name is safe.
                    # The rename waits for the end of the transaction (see PendingImages).
                    self.pending.add(tmp.detach(), store.image_path(digest.sha1))
            except OSError as e:
                if e.errno in STORAGE_ERRNOS:
                    # Named by the cache directory, not the temp file: one report for every path
                    # that the same full or failing file system refuses.
                    raise storage_error(e, store.directory, f"cannot cache {path} (nothing was changed)") from None
                raise BootwatchError(f"cannot cache it: {describe_oserror(e)}", path=real) from None
        self._record(path, digest, st, signature)
        if previous is None:
            outcome = AddOutcome.CACHED
        elif previous == digest.sha1:
            outcome = AddOutcome.UNCHANGED
        else:
            outcome = AddOutcome.CHANGED
        return AddResult(path, digest.sha1, outcome, previous)

    def _record(self, path: str, digest: Digest, st: os.stat_result, signature: StatSignature) -> None:
        # Read before the index changes: without a record, the index is the evidence (references).
        known = self.references.unknown is None
        self.index.add_image(path, digest, st.st_mode, st.st_uid, st.st_gid, int(st.st_mtime), cached_at=_now())
        self.index.record_signature(path, signature, digest.sha1)
        if known:
            # While references are unknown nothing is trimmed: the older images stay listed
            # until a clean (or an add) with known references trims them.
            self.unlisted.update(self.index.trim(path, self.cache.keep))
        self.dirty = True

    # ---------------------------------------------------------------- remove

    def remove(self, path: str, *, force: bool = False) -> list[str]:
        """Uncache ``path``. Refused while boot entries reference it, unless ``force``."""
        normalize_boot_path(path)
        if path not in self.index:
            raise BootwatchError("is not cached", path=path)
        self._writable(f"cannot uncache {path}")
        count = self.references.get(path, 0)
        if count and not force:
            raise BootwatchError(f"is referenced by {boot_entries(count)}; "
                                 "not removing it", path=path, hint="use 'remove --force' to uncache it anyway")
        unknown = self.references.unknown
        if unknown is not None and not force:
            raise ReferencesUnknownError(f"{unknown}; not removing {path}: it may be referenced",
                                         hint="use 'remove --force' to uncache it anyway")
        if not count and unknown is None:  # a restored copy goes only when nothing is known to need it
            self.remove_restored_copy(path)
        ids = self.index.image_ids(path)
        self.unlisted.update(self.index.remove_path(path))
        self.dirty = True
        return ids

    def remove_restored_copy(self, path: str) -> bool:
        """Delete the copy of ``path`` that bootwatch restored; the caller knows no entry references it.

        Only the very file bootwatch wrote, at the very name it wrote it (never what a symlink
        there names), unchanged since (its recorded :class:`RestoredFile`), is deleted, and only if
        no other referenced path leads to it (a symlink someone made to it). A marker beside any
        other file is stale: the file is someone else's (a package manager put it back, by rename,
        maybe with the same content). Then the marker goes, and the file stays. A marker without
        a record (boom's restores, or an older bootwatch) says nothing bootwatch can check: the
        file stays, and so does the marker, for boom. The deletion itself is safe against a
        rename over the name at the same moment (:func:`bootwatch.cache.fileid.remove_if_same`).
        Nothing is taken away while the cache is read-only (the index could not say so).
        """
        checked = self._restored_copy_to_remove(path)
        if checked is None:
            return False
        name, restored = checked
        result = remove_if_same(name, restored.identity)
        if result.outcome is Removal.REMOVED:
            self._remove_marker(name.parent / restored_marker_name(path))
            self.dirty |= self.index.forget_restored(path)
            fsync_directory(name.parent)
            return True
        if result.outcome is Removal.GONE:
            self.forget_restored_copy(path)
        elif result.outcome is Removal.UNSUPPORTED:
            log.warning("%s: not removing the restored copy: it cannot be renamed aside (its filesystem cannot "
                        "rename without replacing, or the name is too long), which deleting it safely needs", name)
        else:
            if result.outcome is Removal.KEPT_ASIDE:
                log.warning("%s: replaced twice while bootwatch was removing its restored copy: the file renamed "
                            "over it first is kept as %s, the newest at its name; bootwatch deletes neither",
                            name, result.aside)
            self.drop_stale_marker(path, name)
        return False

    def _restored_copy_to_remove(self, path: str) -> tuple[Path, RestoredFile] | None:
        """The name of ``path`` and the record of the restore, if the file there is bootwatch's very
        restored copy, marked, and no other referenced path leads to it; else None (and a stale
        marker or record dropped, see :meth:`remove_restored_copy`)."""
        if self.read_only:
            return None
        try:
            name = self.cache.boot_name(path)
        except UnsafePathError:
            return None
        if not os.path.lexists(name.parent / restored_marker_name(path)):
            return None
        restored = self.index.restored_file(path)
        if restored is None:
            if os.path.lexists(name):
                log.info("%s: not removing it, though nothing references it: bootwatch has no record of writing "
                         "this file (a restore by boom?)", name)
            return None
        try:
            identity = identity_at(name)
        except OSError as e:
            log.warning("%s: not removing the restored copy: %s", name, describe_oserror(e))
            return None
        if identity is None and not os.path.lexists(name):  # nothing left to mark
            self.forget_restored_copy(path)
            return None
        if identity is None or not restored.is_file(identity):
            self.drop_stale_marker(path, name)
            return None
        needed_by = self._referenced_alias(path, identity)
        if needed_by is not None:
            log.info("%s: not removing the restored copy: the referenced path %s leads to it", name, needed_by)
            return None
        return name, restored

    def _referenced_alias(self, path: str, identity: FileIdentity) -> str | None:
        """Another referenced path whose boot file is this inode (through a symlink), if any."""
        for other, count in self.references.items():
            if not count or other == path:
                continue
            try:
                st = os.stat(self.cache.boot_file(other))
            except (OSError, UnsafePathError):
                continue
            if (st.st_dev, st.st_ino) == identity.inode:
                return other
        return None

    def forget_restored_copy(self, path: str) -> None:
        """The file a restore of ``path`` wrote is gone (or another is at its name): forget it, and
        remove the marker too if that restore made it, so that no later file of that name (a
        kernel installed again) sits beside a marker that makes it look restored. A marker the
        restore found there (boom's) stays. Decided when the cache is writable (the index must
        say it)."""
        if self.read_only:
            return
        restored = self.index.restored_file(path)
        if restored is not None and restored.made_marker:
            with contextlib.suppress(UnsafePathError):
                name = self.cache.boot_name(path)
                if self._remove_marker(name.parent / restored_marker_name(path)):
                    log.info("%s: removed the .boomrestored marker bootwatch made: the file it restored is gone",
                             name)
        self.dirty |= self.index.forget_restored(path)

    def drop_stale_marker(self, path: str, name: Path) -> None:
        """The boot file at ``name``, the name of ``path``, is not the file bootwatch restored any
        more: it is not ours.

        Its marker (only ``.<name>.boomrestored`` beside it, and only an empty regular file) and
        the record go; the file itself is never touched (nor anything while the cache is read-only:
        the index must say it).
        """
        if self.read_only:
            return
        self._remove_marker(name.parent / restored_marker_name(path))
        self.dirty |= self.index.forget_restored(path)
        log_event(log, Event.RESTORED_COPY_REPLACED,
                  "%s: replaced or changed since bootwatch restored it: it is no longer bootwatch's restored "
                  "copy and is never deleted by bootwatch; its .boomrestored marker was removed", name,
                  level=NOTICE, path=path)

    @staticmethod
    def _make_marker(marker: Path) -> None:
        """Create the empty marker, or keep the one there. Only a regular file counts: a FIFO of that
        name would block an ``O_WRONLY`` open until a reader came (with the lock held), hence
        ``O_NONBLOCK``; a symlink fails on ``O_NOFOLLOW``."""
        not_a_file = BootwatchError("is not a regular file; not restoring", path=marker,
                                    hint="a .boomrestored marker is an empty regular file; remove what is there")
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.lstat(marker).st_mode):
                raise not_a_file
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as e:
            why = os.strerror(e.errno).lower() if e.errno else str(e)
            raise BootwatchError(f"cannot create the restored-copy marker ({why}); not restoring",
                                 path=marker) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise not_a_file
        finally:
            os.close(fd)

    @staticmethod
    def _remove_marker(marker: Path) -> bool:
        """Unlink a marker, if it is one: an empty regular file (never a directory or what a symlink
        names, nor a file with content, which is no marker boom or bootwatch wrote)."""
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(marker)
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(marker)
                return True
        return False

    # ---------------------------------------------------------------- restore

    def flush(self) -> None:
        """Give the images added so far their final names (before anything reads them)."""
        self.pending.flush()

    def restore(self, path: str, *, force: bool = False) -> str:
        """Copy the newest image of a MISSING path back into the boot directory; return its id.
        ``force``: also where it leaves its filesystem without the headroom (never where it does
        not fit)."""
        self._may_restore(path)
        state = self.cache.path_status(self.index, path, self.references).state
        if state is not PathState.MISSING:
            raise BootwatchError(f"is {state}, not MISSING; only a missing image is restored", path=path,
                                 hint=f"'bootwatch restore --image ID {path}' puts one of its images in place "
                                      "of the file there")
        image_id = self._image_to_restore(path)
        # The name itself, never what a symlink there names: a dangling /vmlinuz -> vmlinuz-6.1
        # is not restored by writing vmlinuz-6.1, which is another path (another entry may need
        # it, and deleting this path's restored copy later would delete that one).
        real = self.cache.boot_name(path)
        link = dangling_link(real)
        if link is not None:
            raise BootwatchError(f"is a symlink to {link}, which does not exist; bootwatch never restores through "
                                 "a symlink", path=real, hint=f"restore the path the link names, or remove the "
                                 f"link to restore {path} as a file")
        self._put_image(path, real, image_id, replace=False, force=force)
        if not self.read_only and image_id != self.index.newest(path):
            self.index.make_newest(path, image_id)
        return image_id

    def _image_to_restore(self, path: str) -> str:
        """The newest image of ``path`` whose last check did not fail. A kernel or initramfs written
        broken (its format check failed when it was cached) or rotten since is no way back to a
        boot: the older image that passed is (the trim rule keeps it for this)."""
        for image_id in self.index.images_newest_first(path):
            verified = self.index.verification(image_id)
            if verified is None or verified["ok"] or verified["unchecked"]:
                return image_id
        raise BootwatchError("every cached image of it failed its check; not restoring one", path=path,
                             hint=f"'bootwatch restore --image ID {path}' puts one back all the same")

    def restore_image(self, path: str, image: str, *, force: bool = False) -> str:
        """Put the image ``image`` (its id, or a prefix of it that only one of the path's images
        has) of ``path`` back at the path's name, whatever file is there now (a kernel or
        initramfs that was written broken); return its id.

        Only an image of ``path`` itself: an initramfs put in place of a kernel would not boot,
        and an older image of the same path is what a sysadmin wants back. The file is written
        beside the name and renamed over it, as a restore writes, with the path's recorded
        attributes; the image becomes the path's newest again and the file's signature is
        recorded, so the next pass finds the boot file unchanged: neither a change to cache nor
        a file to take away while an entry names it.
        """
        self._may_restore(path)
        image_id = self._image_of(path, image)
        if not self.cache.store.has_image(image_id):
            raise BootwatchError(f"image {short_id(image_id)} of {path} is not in the cache directory; "
                                 "not restoring it",
                                 path=self.cache.store.image_path(image_id), hint="run 'bootwatch fsck'")
        real = self.cache.boot_name(path)
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            # A symlink is replaced by no file: the path it names is another cache key.
            what = f"a symlink to {os.readlink(real)}" if stat.S_ISLNK(st.st_mode) else f"a {file_kind(st.st_mode)}"
            raise BootwatchError(f"is {what}, not a regular file; bootwatch puts an image back only in place of a "
                                 "file", path=real, hint="restore the path the link names" if stat.S_ISLNK(st.st_mode)
                                 else None)
        if st is not None:
            self._refuse_if_being_written(real, st)
        self._put_image(path, real, image_id, replace=True, force=force)
        if not self.read_only:
            self.index.make_newest(path, image_id)
        return image_id

    @staticmethod
    def _refuse_if_being_written(real: Path, st: os.stat_result) -> None:
        """A file some process has open for writing (an initramfs rebuilt in place) is not
        replaced: the writer would go on into the unlinked old inode and its image be lost
        without a word. What it writes is judged when it is done (caching defers it alike)."""
        writer = process_writing(st.st_dev, st.st_ino)
        if writer is not None:
            command = process_command(writer)
            raise OpenForWritingError(real, f"is open for writing by process {writer}"
                                            f"{f' ({command})' if command else ''}; not replacing it, "
                                            "or what it writes would be lost")

    def _image_of(self, path: str, image: str) -> str:
        """The id of the image of ``path`` that ``image`` names: all of it, or a prefix that no
        other image of the path has. An image of another path only is refused, naming it."""
        ids = self.index.images_newest_first(path)
        found = [i for i in ids if i.startswith(image)]
        if len(found) == 1:
            return found[0]
        listing = ", ".join(ids)
        if found:
            raise BootwatchError(f"{image} is the start of {len(found)} of its images ({', '.join(found)}); "
                                 "not restoring", path=path, hint="give more digits of the image id")
        others = sorted({other for i in self.index.known_image_ids() if i.startswith(image)
                         for other in self.index.paths_of(i)})
        if others:
            raise BootwatchError(f"image {image} is not one of its images but of {', '.join(others)}; bootwatch "
                                 "puts back only an image of the path itself", path=path,
                                 hint=f"its images, newest first: {listing}")
        raise BootwatchError(f"has no image {image}", path=path, hint=f"its images, newest first: {listing}")

    def _may_restore(self, path: str) -> None:
        """Refuse to restore ``path`` where no file may be written for it: not cached, or its
        partition is not the one it was (the boot partition or the ESP is not mounted)."""
        normalize_boot_path(path)
        self.flush()
        if path not in self.index:
            raise BootwatchError("is not cached", path=path)
        if self.references.boot_moved:
            raise BootwatchError(f"not restoring {path}: {self.references.unknown}",
                                 hint="mount the boot partition first")
        if self.references.is_absent(self.cache.boot_name(path)):
            raise BootwatchError(f"not restoring {path}: {self.references.unknown}", hint="mount the ESP first")

    def _put_image(self, path: str, real: Path, image_id: str, *, replace: bool, force: bool = False) -> None:
        """Write image ``image_id`` at ``real``, the name of ``path`` (``replace``: over the file
        there), and record what was written."""
        if not real.parent.is_dir():
            raise BootwatchError(f"cannot restore {path}: its directory no longer exists", path=real.parent)
        self._check_headroom(path, real, image_id, replace=replace, force=force)
        # An earlier restored copy is gone or is about to be replaced: its marker, if bootwatch
        # made it, goes too (a marker beside a file being replaced is made again for the new one).
        self.forget_restored_copy(path)
        identity, made_marker = self._write_restored_copy(path, real, image_id, self.index.meta(path),
                                                          replace=replace)
        # What was written, read back after the rename (which changed its ctime): the marker counts
        # only while the boot file is this very file (see remove_restored_copy).
        if not self.read_only:  # else recorded by the first pass after the cache is writable again
            self.index.record_restored(path, RestoredFile(identity, image_id, made_marker))
            self.index.record_signature(path, identity.signature, image_id)
            self.dirty = True

    def _check_headroom(self, path: str, real: Path, image_id: str, *, replace: bool, force: bool) -> None:
        """Refuse (:class:`HeadroomError`) a restore that the headroom rule refuses
        (:mod:`bootwatch.cache.headroom`: it does not fit, or it leaves the filesystem of ``real``
        without room for one more kernel and initramfs and nothing waives that), before anything
        is written; log one done although it leaves the headroom short. ``replace``: the file at
        ``real`` goes, and its blocks with it unless another name links to it."""
        image = self.cache.store.image_stat(image_id)
        if image is None:
            return  # opening it says what is wrong
        replaced = 0
        if replace:
            with contextlib.suppress(OSError):
                st = os.lstat(real)
                replaced = st.st_size if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 else 0
        room = HostHeadroom(self.references.inventory, self.cache.key_name,
                            lambda key: self.cache.cached_size(self.index, key))
        decision = room.restore_decision(path, real, image.st_size, replacing=replaced, force=force,
                                         repairing=lambda: replace and self._fails_format(real))
        again = f"--image {image_id} {path}" if replace else path
        refusal = decision.refusal
        if refusal is not None:
            anyway = f", or 'bootwatch restore --force {again}' to restore it anyway" if refusal.fits else ""
            raise HeadroomError(refusal.message, path=real,
                                hint=f"free space on {refusal.filesystem} (remove a kernel that no boot entry needs, "
                                     f"an old kernel package), then run 'bootwatch restore {again}'{anyway}")
        if decision.short is not None:
            log.warning("%s: %s; free space on %s (remove a kernel that no boot entry needs)", real,
                        decision.short.message, decision.short.filesystem)

    def _fails_format(self, real: Path) -> bool:
        """Whether the file at ``real`` fails its format check (a kernel or initramfs written broken)."""
        from bootwatch.verify import check_image  # decompressors: only a restore over a file needs them
        runtime = self.cache.runtime_dir if self.cache.runtime_dir is not None else self.cache.store.directory / "run"
        return check_image(real, runtime_dir=Path(runtime), mount=False).failed

    def _write_restored_copy(self, path: str, real: Path, image_id: str, meta: PathMeta, *,
                             replace: bool = False) -> tuple[FileIdentity, bool]:
        """Write the image ``image_id`` to a temp file beside ``real``, checked, with its attributes,
        then link it to ``real`` (``replace``: rename it over the file there) with its marker;
        return the identity of the file now at ``real`` and whether the marker was made (False:
        one was there)."""
        with contextlib.ExitStack() as stack:
            src = self.cache.store.open_image(image_id)
            stack.callback(os.close, src)
            tmp = stack.enter_context(TempFile(real.parent, prefix=RESTORE_TEMP_PREFIX))
            try:
                digest = hash_and_copy(src, tmp.fd, cancel=self.cache.cancel)
            except OSError as e:
                raise BootwatchError(f"cannot restore {path}: {describe_oserror(e)}", path=real) from None
            if digest.sha1 != image_id:
                raise BootwatchError(f"cached image {short_id(image_id)} is corrupt (its content hashes to "
                                     f"{short_id(digest.sha1)}); not restoring it",
                                     path=self.cache.store.image_path(image_id), hint="run 'bootwatch fsck --repair'")
            self._give_restored_attributes(path, real, tmp.fd, meta, os.stat(real.parent))
            mtime_ns = self._restored_mtime_ns(path, image_id)
            if mtime_ns is not None:
                os.utime(tmp.fd, ns=(mtime_ns, mtime_ns))
            # The marker goes first: a crash between the two leaves a marker without a file, which
            # boom and bootwatch read as MISSING; the other order would leave a restored file that
            # looks like the package manager's own.
            marker = real.parent / restored_marker_name(path)
            made_marker = not os.path.lexists(marker)
            self._make_marker(marker)
            written = os.fstat(tmp.fd)
            try:
                # link(2) never follows and never replaces what is there; rename(2) replaces the
                # name itself (what a symlink there names is never written).
                tmp.commit(real, replace=replace)
                identity = identity_at(real)
            except FileExistsError:
                identity = None
            if identity is None or identity.inode != (written.st_dev, written.st_ino):
                if made_marker:  # the file that appeared is not ours: do not mark it as restored
                    self._remove_marker(marker)
                raise BootwatchError("appeared while it was being restored; left alone", path=real)
        return identity, made_marker

    def _give_restored_attributes(self, path: str, real: Path, fd: int, meta: PathMeta,
                                   directory: os.stat_result) -> None:
        """Give the restored file the recorded mode and owner, as far as :func:`restored_attributes` allows.

        What it refuses is logged: the index is untrusted input, and a refused owner or mode bit is
        either a hostile index or a boot file that was unsafe when it was cached.
        """
        wanted = restored_attributes(meta, directory, euid=os.geteuid(), egid=os.getegid())
        uid, gid = wanted.uid, wanted.gid
        current = os.fstat(fd)
        if (uid, gid) != (current.st_uid, current.st_gid):
            try:
                os.fchown(fd, uid, gid)
            except PermissionError:  # not root, and not a member of that group: it stays ours
                uid, gid = current.st_uid, current.st_gid
        os.fchmod(fd, wanted.mode)  # after fchown, which may clear mode bits
        if (wanted.mode, uid, gid) != (stat.S_IMODE(meta.mode), meta.uid, meta.gid):
            log_event(log, Event.RESTORE_ATTRIBUTES_REFUSED,
                      "%s: restored with mode %04o and owner %d:%d instead of the recorded mode %04o and owner "
                      "%d:%d (a restored boot file never gets setuid, setgid or sticky bits, group or other "
                      "write, or an owner other than root or its directory's owner)", real, wanted.mode, uid,
                      gid, stat.S_IMODE(meta.mode), meta.uid, meta.gid, level=logging.WARNING, path=path,
                      recorded_mode=f"{stat.S_IMODE(meta.mode):04o}", recorded_uid=meta.uid,
                      recorded_gid=meta.gid)

    def _restored_mtime_ns(self, path: str, image_id: str) -> int | None:
        """The mtime to give a restored file: the path's own (several paths may share one image,
        each cached at its own mtime), else the image's ``image_ts`` (a path boom cached), else None."""
        mtime_ns = self.index.path_mtime_ns(path, image_id)
        if mtime_ns is not None:
            return mtime_ns
        try:
            mtime_ns = self.index.image_ts(image_id) * 1_000_000_000
        except (ValueError, OverflowError, TypeError):  # NaN, infinity: the index is untrusted
            return None
        return mtime_ns if 0 <= mtime_ns < 1 << 63 else None

    # ---------------------------------------------------------------- verification results

    def record_verification(self, result: ImageVerification) -> bool:
        """Record a result of hashing done without the lock, if it still applies now.

        It does not when the image is no longer listed (a clean, remove or trim deleted it after
        the hash read the index: not a failure, the image is gone by design), or when the image
        was missing then and its file is back now (cached again meanwhile). Returns whether the
        result was recorded.
        """
        if result.image_id not in self.index.known_image_ids():
            return False
        if result.missing and self.cache.store.has_image(result.image_id):
            return False
        if self.read_only:
            return True  # reported, not recorded: it is verified again when the cache is writable
        checks = [check.to_json() for check in result.checks]
        if result.unchecked:
            # Neither ok nor a time: list says so, and the next verify run takes it first.
            self.index.record_verification(result.image_id, {
                "unchecked": True, "message": result.message, "checks": checks})
        else:
            self.index.record_verification(result.image_id, {
                "time": _now(), "ok": result.ok, "message": result.message, "checks": checks})
        self.dirty = True
        return True


class BootCache:
    """A boot directory, its BLS entries, and the cache that keeps its images."""

    def __init__(self, boot_dir: Path, entries_dir: Path, cache_dir: Path, *, keep: int = 2,
                 runtime_dir: Path | None = None, cancel: threading.Event | None = None,
                 entry_sources: tuple[EntrySource, ...] | None = None, esp: Path | None = None) -> None:
        self.boot_dir = Path(boot_dir)
        self.boot_real = Path(os.path.realpath(self.boot_dir))
        self.entries_dir = Path(entries_dir)
        # Where the entries are: every source of the inventory (see bootwatch.entries.inventory).
        self.entry_settings = InventorySettings(self.boot_dir, self.entries_dir, entry_sources,
                                                Path(esp) if esp is not None else None)
        self.store = CacheStore(Path(cache_dir))
        self.keep = keep
        self.runtime_dir = runtime_dir
        # Once set, every copy and hash in progress stops between two chunks (hashing.Cancelled):
        # the daemon sets it when it is asked to stop.
        self.cancel = cancel if cancel is not None else threading.Event()
        # Whether the cache's file system was read-only at the last transaction, and when an index
        # write last succeeded (time.monotonic()): the daemon reports both changes.
        self.read_only = False
        self.index_written_at = 0.0
        # The entry files refused for what they are (a FIFO...), each warned about once while it
        # stays so: once per daemon, each time for a command.
        self._refused_entries: set[str] = set()
        self._lock_refused = threading.Lock()  # the daemon's batches and jobs read entries on their threads
        # The ESP's mount point as the last inventory found it, once one was read (see esp()).
        self._esp: tuple[Path | None] | None = None

    @classmethod
    def from_config(cls, config: Config) -> BootCache:
        return cls(config.paths.boot, config.paths.entries, config.paths.cache, keep=config.cache.keep,
                   runtime_dir=config.paths.runtime, entry_sources=config.entries.sources, esp=config.entries.esp)

    # ---------------------------------------------------------------- reading

    def boot_file(self, path: str) -> Path:
        """The file the cache key ``path`` names, symlinks inside the boot directory (or, for an
        ESP key, the ESP) followed (what is read and cached)."""
        return resolve_in_boot(self.boot_dir, path, boot_real=self.boot_real,
                               esp=self.esp() if is_esp_key(path) else None)

    def boot_name(self, path: str) -> Path:
        """The name ``path`` is, its last component not followed (what a restore writes, and what
        bootwatch may delete again)."""
        return name_in_boot(self.boot_dir, path, boot_real=self.boot_real,
                            esp=self.esp() if is_esp_key(path) else None)

    def key_name(self, path: str) -> Path | None:
        """:meth:`boot_name`, or None for a key that is no safe name in the boot directory or the ESP."""
        try:
            return self.boot_name(path)
        except UnsafePathError:
            return None

    def cached_size(self, index: CacheIndex, path: str) -> int | None:
        """The size of the newest cached image of ``path``; None when it is not cached or its image is gone."""
        if path not in index:
            return None
        image = self.store.image_stat(index.newest(path))
        return image.st_size if image is not None else None

    def read_inventory(self) -> Inventory:
        """Every boot entry of the host, from every source (see :mod:`bootwatch.entries.inventory`)."""
        inventory = read_inventory(self.entry_settings)
        self._esp = (inventory.roots.esp,)
        return inventory

    def entry_locations(self) -> builtins.list[Path]:
        """Every directory whose changes are changes of the entries (what the daemon watches):
        the entries directory, ``EFI/Linux`` of the boot directory, ``grub`` and ``grub2`` (their
        ``grub.cfg``, the files it includes, ``grubenv``) and, with an ESP, its ``loader/entries``
        and ``EFI/Linux``. Whether each is read depends on ``[entries] sources``; watching one
        that is not costs nothing."""
        boot = self.boot_dir
        found = [self.entries_dir, boot / UKI_DIR, *(boot / c.parent for c in GRUB_CONFIGS)]
        esp = self.esp()
        if esp is not None:
            found += [esp / ENTRIES_DIR, esp / UKI_DIR]
        return builtins.list(dict.fromkeys(found))

    def esp(self) -> Path | None:
        """The ESP's mount point as the last read of the inventory found it (the ``/../`` cache keys
        lead there); found as the inventory finds it if nothing was read yet."""
        if self._esp is None:
            settings = self.entry_settings
            if settings.esp is not None:
                self._esp = (Path(os.path.realpath(settings.esp)),)
            elif settings.boot != HOST_BOOT:
                self._esp = (None,)  # a boot directory other than /boot has no ESP unless [entries] esp says
            else:
                self.read_inventory()
        return self._esp[0] if self._esp is not None else None

    def references(self, index: CacheIndex | None = None) -> References:
        """How many boot entries name each cache key, or why that is unknown (see :class:`References`).

        The entries are the inventory's (every source: BLS in the boot directory and on the ESP,
        UKIs, grub.cfg). A source that cannot be read makes references unknown. So do judgements
        against the last complete read (``.bootwatch-references``, see store.py and
        :func:`bootwatch.cache.references.judge`), until a later read agrees with the record or
        ``clean --force`` confirms what the entries say now:

        - the boot directory or the ESP is a mount point in ``/etc/fstab`` and not a mount root
          now (an unmounted partition's mount point): never confirmable, never recorded, even
          as the first read (:mod:`bootwatch.cache.fstab`);
        - there is no trustworthy record (missing: the first run after an upgrade; unreadable,
          not a regular file, not a record of this boot directory), and the read has no positive
          evidence of being the real boot partitions (:func:`~bootwatch.cache.references.has_evidence`).
          A read with that evidence starts the history (it is recorded); one without waits for
          ``clean --force``;
        - a source location that held entries at the last read is missing now or no longer read
          (``grub.cfg`` gone with an unmounted ``/boot``, the ESP's ``loader/entries`` with an
          unmounted ESP): never confirmable while the boot directory is not the mount it was;
        - the boot directory is not the directory of the filesystem it was (the boot partition
          is not mounted, a bind mount of it is gone, another partition is mounted there; see
          :mod:`bootwatch.cache.mountid`): never confirmable;
        - a source location is on another filesystem than it was; the ESP was a mount point and
          is not one now, or is another filesystem;
        - every entry vanished at once: the last read had at least two entries that referenced
          paths, and not one of those entries is among the entries now (new ones do not count:
          kernel-install may write one onto an unmounted partition's mount point). More likely
          an unmount than a decision; removing entries one at a time keeps some of the recorded
          ones at every read, and is a decision each time.
        """
        inventory = self.read_inventory()
        self._warn_refused_entries(list(inventory.refused))
        counts = inventory.reference_counts()
        count = len(inventory.entries)
        if not os.path.isdir(self.boot_dir):
            return References(counts, unknown=f"{self.boot_dir}: not trusted: the boot directory does not exist",
                              boot_moved=True, entries=count, inventory=inventory)
        if inventory.unknown is not None:
            return References(counts, unknown=inventory.unknown, entries=count, inventory=inventory)
        try:
            observed = record_of_read(inventory, self.boot_real, counts)
        except OSError as e:
            return References(counts, unknown=f"{e.filename or self.boot_dir}: cannot tell which filesystem is "
                              f"mounted there ({os.strerror(e.errno).lower() if e.errno else e.strerror})",
                              boot_moved=True, entries=count, inventory=inventory)
        unmounted = self._unmounted_fstab_mount(observed, inventory)
        if unmounted is not None:
            directory, what = unmounted
            return References(counts, unknown=f"{directory}: not trusted: {what} is a mount point in "
                              f"{fstab.FSTAB} and nothing is mounted there; mount it", boot_moved=what != "the ESP",
                              absent=str(directory) if what == "the ESP" else None, entries=count,
                              inventory=inventory)
        last, missing_why = self._last_references()
        if last is None or last["boot"] != observed["boot"]:
            if self._evidence(counts, index):
                return References(counts, entries=count, observed=observed, record=observed, inventory=inventory)
            why = missing_why or "it is about another boot directory"
            subject = ", ".join(loc["path"] for loc in observed["locations"]) or str(self.boot_dir)
            return References(counts, unknown=f"{subject}: not trusted: no trustworthy record of an earlier complete "
                              f"read of the boot entries ({why}), and no boot file the entries name is one bootwatch "
                              "cached from there", confirmable=True, entries=count, observed=observed,
                              inventory=inventory)
        judgement = judge(last, observed, inventory, self.boot_dir)
        if judgement is not None:
            return References(counts, unknown=f"{judgement.subject}: not trusted: {judgement.why}",
                              confirmable=judgement.confirmable, boot_moved=judgement.boot_moved,
                              absent=judgement.absent, entries=count, observed=observed, inventory=inventory)
        return References(counts, entries=count, observed=observed, record=None if observed == last else observed,
                          inventory=inventory)

    def _unmounted_fstab_mount(self, observed: dict[str, Any], inventory: Inventory) -> tuple[Path, str] | None:
        """The boot directory or the ESP, when /etc/fstab lists it as a mount point and it is not a
        mount root now: an unmounted partition's mount point (a stale grub.cfg and kernel may lie
        there), never a read to decide on or to start the history with (see
        :mod:`bootwatch.cache.fstab`)."""
        points = fstab.mount_points()
        if not points:
            return None
        if not observed["boot_mount"]["mount_root"] and fstab.listed(self.boot_dir, points):
            return self.boot_dir, "the boot directory"
        esp = inventory.roots.esp
        if esp is not None and observed["esp_mount"] is None and fstab.listed(esp, points):
            return esp, "the ESP"
        return None

    def _warn_refused_entries(self, refused: builtins.list[str]) -> None:
        with self._lock_refused:
            for line in refused:
                if line not in self._refused_entries:
                    log.warning("%s", line)
            self._refused_entries = set(refused)

    def _evidence(self, counts: dict[str, int], index: CacheIndex | None) -> bool:
        """Whether a read without a record is of the real boot partitions (see
        :func:`bootwatch.cache.references.has_evidence`). An unmounted partition's mount point
        may hold a stale entry, rarely the very files bootwatch cached from the partition."""
        if not counts:
            return False  # no boot file named: nothing to compare (and no index to load)
        if index is None:
            try:
                index = self.load_index()
            except (OSError, BootwatchError):
                return False  # no evidence from an index that cannot be read
        signatures = index.signatures(counts)
        return has_evidence(counts, self.boot_file, signatures.image_of if index.paths() else None)

    def _last_references(self) -> tuple[dict[str, Any] | None, str | None]:
        """The last complete read, if ``.bootwatch-references`` holds a well-formed one; else None
        and why not."""
        return parse_record(self.store.read_derived(REFERENCES_NAME), self.store.directory / REFERENCES_NAME)

    def write_references_record(self, record: dict[str, Any]) -> None:
        """Remember a read of the entries (the lock holder): fsynced, by rename."""
        self.store.write_derived(REFERENCES_NAME, json.dumps(record).encode() + b"\n", durable=True)

    def load_index(self) -> CacheIndex:
        """Read the index without the lock (renames make that safe). No cache directory: empty."""
        if not os.path.lexists(self.store.directory):
            return CacheIndex()
        self.store.check()
        return self.store.load_index()

    def path_status(self, index: CacheIndex, path: str, references: dict[str, int]) -> PathStatus:
        """The state of one path, computed as boom computes it, without reading the boot file.

        boom hashes the boot file to tell RESTORED from CACHED; bootwatch uses the stat signature
        recorded when it last hashed or restored the file. A boot file that changed since is
        reported with ``boot_changed`` (its new content is hashed by add, scan or the daemon).
        """
        newest = index.newest(path)
        boot_st: os.stat_result | None = None
        restored_marker = False
        try:
            boot_st = os.stat(self.boot_file(path))
            name = self.boot_name(path)
            restored_marker = os.path.lexists(name.parent / restored_marker_name(path))
        except (OSError, UnsafePathError):
            boot_st = None
        image_st = self.store.image_stat(newest)
        boot_changed = False
        if boot_st is not None and image_st is not None:
            known = index.signatures([path]).image_of(path, boot_st)
            recorded = StatSignature.from_json(index.path_extra(path).get("stat")) is not None
            boot_changed = recorded and known is None
            restored = index.restored_file(path) if restored_marker else None
            if restored is not None:
                # bootwatch restored it: RESTORED only while the file at its name is the one it wrote.
                try:
                    ours = restored.is_file(identity_at(name))
                except OSError:
                    ours = False
                state = PathState.RESTORED if ours and restored.image_id == newest else PathState.CACHED
            else:
                if restored_marker and known is None and not recorded:
                    # Restored by boom, which records no signature: hash it once, as boom does.
                    # (Everything bootwatch caches or restores has a signature, so its own entries are never read here.)
                    with contextlib.suppress(OSError, ContentChangedError):  # being rewritten: not RESTORED
                        known = hash_path(self.boot_file(path))[0].sha1
                state = PathState.RESTORED if restored_marker and known == newest else PathState.CACHED
        elif image_st is not None:
            state = PathState.MISSING
        elif boot_st is not None:
            state = PathState.BROKEN
        else:
            state = PathState.UNKNOWN
        size = index.recorded_size(newest)
        verified = Verification.recorded(index, newest)
        problem: str | None = None
        if image_st is None:
            problem = "image file missing"
        elif size is not None and image_st.st_size != size:
            problem = f"image size {image_st.st_size} differs from the {size} bytes cached"
        elif verified is not None and verified.failed:
            problem = f"failed verification: {verified.message}"
        meta = index.meta(path)
        return PathStatus(path=path, image_id=newest, images=index.images_newest_first(path), state=state,
                          count=references.get(path, 0), image_ts=index.image_ts(newest), mode=meta.mode,
                          uid=meta.uid, gid=meta.gid, boot_changed=boot_changed, image_problem=problem,
                          verified=verified)

    def list(self, paths: Sequence[str] | None = None) -> builtins.list[PathStatus]:
        index = self.load_index()
        references = self.references(index)
        selected = index.paths() if paths is None else list(paths)
        result = []
        for path in selected:
            if path not in index:
                raise BootwatchError("is not cached", path=path)
            result.append(self.path_status(index, path, references))
        return result

    # ---------------------------------------------------------------- writing

    def lock_waiter(self, waiter: LockWaiter | None = None) -> LockWaiter:
        """``waiter``, or one that only gives the wait for the writers' lock up once :attr:`cancel`
        is set: every writer of this cache waits the same way, and a stop ends every wait."""
        return waiter if waiter is not None else LockWaiter(self.cancel)

    @contextlib.contextmanager
    def transaction(self, *, remove_stale: bool = True, waiter: LockWaiter | None = None,
                    reads_only: bool = False) -> Iterator[Transaction]:
        """Lock, load the index, yield a :class:`Transaction`, write the index once, delete unlisted images.

        ``reads_only`` (a dry run): the lock is taken as on a read-only cache, on the lock file if
        there is one, and nothing is created or written, not even the lock file or ``.tmp/``.
        """
        removed: list[Path] = []
        waiter = self.lock_waiter(waiter)
        with contextlib.ExitStack() as stack:
            if reads_only:
                stack.enter_context(self.store.locked_read_only(waiter=waiter))
                image_ids, read_only = None, True
            else:
                try:
                    image_ids = stack.enter_context(self.store.locked(remove_stale=remove_stale, waiter=waiter,
                                                                      removed=removed))
                    self.read_only = read_only = False
                except CacheReadOnlyError:
                    # The cache can still be read: a transaction that only restores goes on (see
                    # Transaction.read_only); one that must change the cache fails naming it.
                    stack.enter_context(self.store.locked_read_only(waiter=waiter))
                    image_ids, self.read_only = None, True
                    read_only = True
            index, digest = self.store.load_index_and_digest()
            txn = Transaction(self, index, image_ids, digest)
            txn.removed_temp_files = removed
            txn.read_only = read_only
            try:
                yield txn
                txn.flush()  # images first: the index must never list an image without its file
            finally:
                txn.pending.discard()  # only left on an error; the index was not written
            if txn.read_only:
                if txn.dirty:
                    raise CacheReadOnlyError(self.store.directory, "cannot write the new index")
                return  # nothing written, so nothing may be deleted
            if txn.dirty:
                txn.index_digest = self.store.write_index_making_room(txn.index)
                self.index_written_at = time.monotonic()
            if txn.record_signatures and txn.index_digest is not None:
                write_signatures(self.store, txn.index.signatures(), txn.index_digest)
            refs = txn._references
            if refs is not None and refs.record is not None:
                self.write_references_record(refs.record)
            self._delete_unlisted(txn)

    def _delete_unlisted(self, txn: Transaction) -> builtins.list[str]:
        listed = txn.index.all_image_ids()
        candidates = sorted(i for i in txn.unlisted if i not in listed)
        if not candidates or self.store.unsuperseded_corrupt_copies():
            # A repair did not complete: the index may lack what the kept copy knew. The images
            # stay as orphans until 'fsck --repair' merges the copy (see store.py).
            return []
        pinned = self.store.pinned_image_ids()
        deleted = []
        for image_id in candidates:
            if image_id not in pinned and self.store.delete_image(image_id):
                deleted.append(image_id)
        if deleted:
            os.fsync(self.store.fd)
        return deleted

    def add(self, paths: Sequence[str]) -> builtins.list[AddResult]:
        with self.transaction() as txn:
            return [txn.add(path) for path in paths]

    def remove(self, paths: Sequence[str], *, force: bool = False) -> None:
        with self.transaction() as txn:
            for path in paths:
                txn.remove(path, force=force)

    def restore(self, paths: Sequence[str], *, force: bool = False) -> builtins.list[str]:
        with self.transaction() as txn:
            return [txn.restore(path, force=force) for path in paths]

    def restore_image(self, path: str, image: str, *, force: bool = False) -> str:
        """:meth:`Transaction.restore_image` under the lock; the id of the image put back."""
        with self.transaction() as txn:
            return txn.restore_image(path, image, force=force)

    # ---------------------------------------------------------------- verify

    def verify_image(self, index: CacheIndex, image_id: str, *, deadline: float | None = None) -> ImageVerification:
        """Re-hash one cached image and compare it with its id and the SHA256 recorded at caching time.

        ``deadline`` (``time.monotonic()``) bounds the content check's walk of a filesystem or an
        initramfs: past it the check is ``incomplete`` (see :func:`bootwatch.verify.check_image`), and
        the result ``unchecked``.
        """
        paths = index.paths_of(image_id)
        try:
            fd = self.store.open_image(image_id)
        except FileNotFoundError:
            return ImageVerification(image_id, paths, False, "image file is missing", missing=True)
        except OSError as e:
            return ImageVerification(image_id, paths, False, describe_oserror(e))
        try:
            digest = hash_and_copy(fd, cancel=self.cancel)
        except OSError as e:
            return ImageVerification(image_id, paths, False, f"read error: {os.strerror(e.errno) if e.errno else e}")
        finally:
            os.close(fd)
        if digest.sha1 != image_id:
            return ImageVerification(image_id, paths, False, f"content hashes to {digest.sha1}, not to its id")
        recorded = index.recorded_sha256(image_id)
        if recorded is not None and recorded != digest.sha256:
            return ImageVerification(image_id, paths, False, "SHA256 differs from the one recorded at caching time")
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        checks = self.content_checks(image_id, timeout=timeout)
        failed = [c for c in checks if c.failed]
        if failed:
            return ImageVerification(image_id, paths, False, failed[0].message, checks)
        cut_off = [c for c in checks if c.incomplete]
        if cut_off:
            return ImageVerification(image_id, paths, False, cut_off[0].message, checks, unchecked=True)
        return ImageVerification(image_id, paths, True, "ok", checks)

    def content_checks(self, image_id: str, *, timeout: float | None = None,
                       mount: bool = True) -> builtins.list[ImageCheck]:
        """Checks by kind of image (kernel, initramfs, filesystem) of the cached image: see
        :func:`bootwatch.verify.check_image` (``timeout``, ``mount``).

        Filesystem images are loop-mounted under the runtime directory; without one (a library
        user that gave none) a private directory under the cache is used.
        """
        from bootwatch.verify import check_image  # loop, mount and decompressors: only checks need them
        runtime = self.runtime_dir if self.runtime_dir is not None else self.store.directory / "run"
        return [check_image(self.store.image_path(image_id), runtime_dir=Path(runtime), timeout=timeout, mount=mount)]

    def verify(self, paths: Sequence[str] | None = None, *,
               on_image: Callable[[int, int, str, builtins.list[str]], None] | None = None,
               ) -> builtins.list[ImageVerification]:
        """Verify the images of ``paths`` (all by default) and record the results in the index.

        Hashing runs without the lock, so the daemon and other writers are not held up; the
        results are recorded under the lock, for the images that are still listed then.
        ``on_image(n, total, image_id, paths)`` is called before the n-th image (from 1) is read.
        """
        index = self.load_index()
        selected = index.paths() if not paths else list(paths)
        ids: list[str] = []
        for path in selected:
            if path not in index:
                raise BootwatchError("is not cached", path=path)
            ids.extend(i for i in index.images_newest_first(path) if i not in ids)
        results = []
        for n, image_id in enumerate(ids, 1):
            if on_image is not None:
                on_image(n, len(ids), image_id, index.paths_of(image_id))
            results.append(self.verify_image(index, image_id))
        return self.record_verifications(results)

    def record_verifications(self, results: Sequence[ImageVerification]) -> builtins.list[ImageVerification]:
        """Record results of hashing done without the lock; return those that still apply under
        it (see :meth:`Transaction.record_verification`): only these are reported."""
        if not results:
            return []
        with self.transaction(remove_stale=False) as txn:
            return [result for result in results if txn.record_verification(result)]

    # ---------------------------------------------------------------- clean

    def clean(self, *, dry_run: bool = False, force: bool = False, keep: int | None = None,
              keep_unreferenced: Callable[[str], bool] = lambda path: False) -> CleanReport:
        """Uncache unreferenced paths, trim to ``keep`` images, delete orphans and stale temp files.

        ``keep``: images per path, :attr:`keep` by default. The daemon's clean job gives the one
        of the settings it started with, so a reload meanwhile (which changes :attr:`keep` on the
        worker) cannot give it half of the new configuration.

        A path stays cached while a boot entry references it, while ``keep_unreferenced`` says so
        (the daemon's ``track = "all"`` policy), or while a pin holds one of its images. Nothing is
        cleaned while the references are unknown (:class:`ReferencesUnknownError`); ``force``
        confirms what the entries say now where the doubt was a judgement (every entry gone at
        once, the boot directory no longer a mount point), never where they cannot be read.
        """
        report = CleanReport()
        # Nothing to clean is not what a missing cache directory says (a mistyped --cache-dir):
        # refused, and never created.
        self.store.check_existing()
        with self.transaction(remove_stale=False, reads_only=dry_run) as txn:
            if not dry_run:
                txn._writable("nothing can be cleaned")
            listed_before = txn.index.all_image_ids()
            on_disk = set(self.store.image_ids_on_disk())
            self._may_clean(txn, force=force, dry_run=dry_run)
            if not dry_run:
                self.put_back_set_aside(txn.index)
            temp_files = self.stale_temp_files(txn.index)
            report.removed_temp_files = [str(p) for p in temp_files]
            pinned = self.store.pinned_image_ids()
            # A dry run works on a copy that is thrown away; the real run on the locked index.
            work = Transaction(self, txn.index.copy() if dry_run else txn.index)
            work._references = txn.references
            self._uncache_unreferenced(work, report, pinned, keep_unreferenced, dry_run=dry_run)
            dropped = work.index.trim_paths(work.index.paths(), self.keep if keep is None else keep)
            report.trimmed_images.extend(dropped)
            work.unlisted.update(dropped)
            strays = work.index.drop_stray_images()
            listed = work.index.all_image_ids()
            work.unlisted.update(strays)
            work.unlisted.update(on_disk - listed)
            report.deleted_images = sorted(i for i in work.unlisted
                                           if i not in pinned and self.store.has_image(i))
            report.kept_pinned += sorted(i for i in work.unlisted if i in pinned and self.store.has_image(i))
            if not dry_run:
                txn.dirty = bool(report.uncached_paths or report.trimmed_images or strays)
                txn.unlisted.update(work.unlisted)
                # Space first: the stale temp files, and the orphans that the index on disk does
                # not list (so deleting them needs no index write), go before the new index is
                # written; on a full file system that write then has room. The images that only
                # the new index drops wait for it, as the protocol in store.py says.
                _remove_files(self.store, temp_files)
                self._delete_orphans(sorted(on_disk - listed_before - pinned))
        return report

    def _may_clean(self, txn: Transaction, *, force: bool, dry_run: bool) -> None:
        """Refuse to clean while a repair did not complete, or while the references are unknown
        (``force`` confirms them where the doubt was a judgement; a dry run records nothing)."""
        copies = self.store.unsuperseded_corrupt_copies()
        if copies:
            raise DeletionsBlockedError("a corrupt index kept by a repair that did not complete; nothing is "
                                        "cleaned while it is there", path=copies[0],
                                        hint="run 'bootwatch fsck --repair' to merge it into the index")
        refs = txn.confirm_references() if force else txn.references
        if dry_run:
            refs.record = None  # a dry run confirms nothing
        if refs.unknown is not None:
            if refs.confirmable:
                hint = "if that is how it should be, 'bootwatch clean --force' confirms it"
            elif refs.boot_moved or refs.absent is not None:
                what = "the boot partition" if refs.boot_moved else f"the ESP at {refs.absent}"
                hint = (f"mount {what}; only if it was really replaced, delete "
                        f"{self.store.directory / REFERENCES_NAME} and run 'bootwatch clean --force'")
            else:
                hint = "mount the boot partition or fix [paths] entries; clean works again once every entry can be read"
            raise ReferencesUnknownError(f"{refs.unknown}; nothing was cleaned", hint=hint)

    def _uncache_unreferenced(self, work: Transaction, report: CleanReport, pinned: set[str],
                              keep_unreferenced: Callable[[str], bool], *, dry_run: bool) -> None:
        """Uncache the paths nothing keeps (no entry, no pin, not ``keep_unreferenced``), taking
        their restored copies away (not in a dry run).

        Linear in the paths: the index is changed in bulk (remove_paths), which looks at the
        remaining paths once, not once per path.
        """
        for path in work.index.paths():
            if work.references.get(path, 0) or keep_unreferenced(path):
                continue
            if not pinned.isdisjoint(work.index.image_ids(path)):
                report.kept_pinned.append(path)
                continue
            if not dry_run and work.remove_restored_copy(path):
                report.removed_restored_copies.append(path)
            report.uncached_paths.append(path)
        work.unlisted.update(work.index.remove_paths(report.uncached_paths))

    def _delete_orphans(self, orphans: builtins.list[str]) -> None:
        """Delete images the index on disk does not list, unless a repair did not complete."""
        if orphans and not self.store.unsuperseded_corrupt_copies():
            for image_id in orphans:
                self.store.delete_image(image_id)
            os.fsync(self.store.fd)

    def stale_temp_files(self, index: CacheIndex, also: Iterable[Path] = ()) -> builtins.list[Path]:
        """Every temp file bootwatch left behind: ``<cache>/.tmp/*`` and the restore temp files in the
        boot directory and beside cached paths (plus ``also``, restore temp files a walk found).

        Only a holder of the lock may call this: temp files are written only under the lock, so
        then every one found is left by a writer that was killed.
        """
        return self.store.stale_temp_files() + self._stale_restore_temp_files(index, also)

    def remove_stale_temp_files(self, index: CacheIndex, also: Iterable[Path] = ()) -> builtins.list[Path]:
        """Remove :meth:`stale_temp_files` (a holder of the lock): at daemon start and by scan, as clean
        does; and put back what a killed removal of a restored copy left aside (:meth:`put_back_set_aside`)."""
        self.put_back_set_aside(index)
        return _remove_files(self.store, self.stale_temp_files(index, also))

    def put_back_set_aside(self, index: CacheIndex) -> builtins.list[Path]:
        """Boot files that a killed removal of a restored copy left under an aside name (see
        :func:`bootwatch.cache.fileid.remove_if_same`): each is renamed back to its name, never replacing
        anything, and never deleted (it may be a package's file that was renamed over the name at
        that moment). A holder of the lock only. Returns the names put back."""
        put = []
        for directory in self._restore_directories(index):
            with contextlib.suppress(OSError), os.scandir(directory) as it:
                asides = [Path(e.path) for e in it if e.name.startswith(ASIDE_PREFIX)]
            for aside in asides:
                try:
                    name = put_back(aside)
                except OSError as e:
                    log.warning("%s: left by an interrupted removal of a restored copy; cannot put it back: %s",
                                aside, describe_oserror(e))
                    continue
                if name is None:
                    log.warning("%s: left by an interrupted removal of a restored copy; not put back, since "
                                "another file has its name now; bootwatch deletes neither", aside)
                    continue
                log.info("%s: put back from %s, where an interrupted removal of a restored copy left it", name, aside)
                put.append(name)
        return put

    def _restore_directories(self, index: CacheIndex) -> builtins.list[Path]:
        """The directories a restore may have written to: the boot directory and those of cached paths."""
        dirs = {self.boot_dir}
        for path in index.paths():
            with contextlib.suppress(UnsafePathError):
                dirs.add(self.boot_file(path).parent)
                dirs.add(self.boot_name(path).parent)
        return sorted(dirs)

    def _stale_restore_temp_files(self, index: CacheIndex, also: Iterable[Path] = ()) -> builtins.list[Path]:
        """Restore temp files in the boot directories of cached paths (left by a killed restore)."""
        found = {p for p in also if p.name.startswith(RESTORE_TEMP_PREFIX)}
        for directory in self._restore_directories(index):
            with contextlib.suppress(OSError), os.scandir(directory) as it:
                for e in it:
                    if not e.name.startswith(RESTORE_TEMP_PREFIX):
                        continue
                    # A restore makes only regular files: a directory (or FIFO...) of that name is
                    # not its leftover, and is never removed (let alone its tree).
                    try:
                        if e.is_file(follow_symlinks=False):
                            found.add(Path(e.path))
                            continue
                        kind = file_kind(e.stat(follow_symlinks=False).st_mode)
                    except OSError:
                        continue
                    self.store.warn_once(Path(e.path), not_a_temp_file(kind))
        return sorted(found)


def _remove_files(store: CacheStore, paths: Iterable[Path]) -> list[Path]:
    """Unlink each of ``paths`` (the cache's own relative to its descriptors); return those that were there.

    One that cannot be removed (a directory swapped in since it was listed, a read-only boot
    directory) is warned about once, naming it, and left: a leftover temp file is harmless.
    """
    removed = []
    for path in paths:
        if path.name.startswith(RESTORE_TEMP_PREFIX):
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                store.warn_once(path, cannot_remove_temp_file(e))
                continue
            removed.append(path)
        elif store.remove_temp_file(path):
            removed.append(path)
    return removed
