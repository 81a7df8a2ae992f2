"""``bootwatch fsck``: check that the index and the image files agree, and repair what can be.

Without ``repair`` nothing is written. With it, under the writers' lock:

- a corrupt index is first copied to ``cacheindex.json.corrupt-<time>`` (fsynced, never deleted)
  and a new one is rebuilt from what can be salvaged of it and from the images that still hash to
  their ids; the corrupt index stays at its name until the rebuilt one replaces it by rename, so a
  repair killed at any moment leaves an index. An image whose path cannot be recovered from the
  old index is matched against the boot files of the same size, and otherwise kept in
  ``lost+found/``;
- a missing index while images are there (a lost index, not an empty cache: see ``store.py``) is
  rebuilt the same way, from the images alone; no image is deleted;
- a kept copy that no completed repair superseded (a repair was killed; see ``store.py``) is
  merged again: the paths it knows and the index lacks come back if their images are good. Once
  the index is written, each merged copy is marked superseded, and images may be deleted again;
- a listed image that is missing or corrupt is copied again from the boot directory when the boot
  file still has that content; otherwise the id is dropped from its paths and a corrupt file is
  moved to ``lost+found/`` (``<id>.img.corrupt``);
- ``images`` entries that no path lists are dropped, and stale temp files are removed.

Orphaned images (on disk, not listed) are a warning, not a problem: an interrupted writer leaves
them by design (see ``store.py``) and ``clean`` removes them.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootwatch.cache.fileid import identity_at
from bootwatch.cache.hashing import Digest, hash_file, hash_path
from bootwatch.cache.index import CacheIndex, parse_json, valid_image_entry, valid_path_meta
from bootwatch.cache.operations import BootCache, Transaction
from bootwatch.cache.store import CacheStore, restored_marker_name
from bootwatch.errors import (
    BootwatchError,
    ContentChangedError,
    FileTooLargeError,
    IndexCorruptError,
    IndexMissingError,
    NotRegularFileError,
    UnsafePathError,
    describe_oserror,
)
from bootwatch.log import counted
from bootwatch.safety import file_kind, normalize_boot_path, open_regular

DEFAULT_MODE = 0o100644


@dataclass
class FsckReport:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "warnings": self.warnings, "repaired": self.repaired}


def check_cache(cache: BootCache, *, repair: bool = False) -> FsckReport:
    report = FsckReport()
    store = cache.store
    store.check_existing()  # no cache directory is no cache, not a consistent one
    with store.locked(create=False, remove_stale=False):
        temps = store.stale_temp_files()
        for temp in temps:
            report.warnings.append(f"{temp}: temp file left by an interrupted writer")
        digests = _hash_images_on_disk(cache)
        copies = _check_kept_copies(store, report)
        loaded = _load_index(store, copies, report, repair=repair)
        if loaded is None:
            return report
        index, salvaged = loaded
        unmerged: list[Path] = []
        if repair and (copies or salvaged):
            # A corrupt or a missing index: the images no copy claims are placed (boot files, lost+found).
            index, unmerged = _salvage(cache, index, copies, digests, report,
                                       place_unassigned=salvaged or not store.index_exists())
        changed = _check_listed_images(cache, index, digests, report, repair=repair)
        changed |= _check_restored_markers(cache, index, report, repair=repair)
        _check_unlisted_images(store, index, digests, report, repair=repair)
        strays = sorted(index.known_image_ids() - index.all_image_ids())
        for image_id in strays:
            report.warnings.append(f"{store.index_path}: images['{image_id}'] is listed by no path")
        if repair:
            if strays:
                index.drop_stray_images()
                report.repaired.append(f"dropped {len(strays)} image entries no path lists")
            if changed or strays or salvaged or copies:
                store.write_index(index)
            _mark_merged_copies(store, [copy for copy in copies if copy not in unmerged], report)
            _remove_temp_files(store, temps, report)
    return report


def _remove_temp_files(store: CacheStore, temps: list[Path], report: FsckReport) -> None:
    removed = [temp for temp in temps if store.remove_temp_file(temp)]
    if removed:
        report.repaired.append(f"removed {len(removed)} stale temp files")


def _check_kept_copies(store: CacheStore, report: FsckReport) -> list[Path]:
    """The kept corrupt indexes no completed repair superseded, each reported as a problem."""
    copies = store.unsuperseded_corrupt_copies()
    for copy in copies:
        kind = _not_a_copy(store, copy)
        if kind is not None:
            report.problems.append(_unmergeable(copy, f"is a {kind}"))
            continue
        report.problems.append(f"{copy}: a corrupt index kept by a repair that did not complete; no image "
                               "is deleted while it is there ('bootwatch fsck --repair' merges it)")
    return copies


def _load_index(store: CacheStore, copies: list[Path], report: FsckReport, *,
                repair: bool) -> tuple[CacheIndex, bool] | None:
    """The index and whether it is to be salvaged (it was missing or corrupt: then an empty one);
    None when it is missing or corrupt and ``repair`` is not asked for. A corrupt index is kept
    first, and its copy added to ``copies``."""
    try:
        return store.load_index(), False
    except IndexMissingError as e:
        # Lost, not empty: the images are what is left of it. Rebuilt like a corrupt index, from
        # the images that hash to their ids and the boot files; there is nothing to keep a copy of.
        report.problems.append(f"{e} ('bootwatch fsck --repair' rebuilds it from the images and the boot "
                               "files; until then nothing is deleted)")
        if not repair:
            return None
    except IndexCorruptError as e:
        report.problems.append(str(e))
        if not repair:
            return None
        copy = _keep_corrupt_index(store)
        report.repaired.append(f"kept the corrupt index as {copy}")
        if copy not in copies:
            copies.append(copy)
    return CacheIndex(), True


def _keep_corrupt_index(store: CacheStore) -> Path:
    if store.index_is_symlink():
        # Never followed, as no reader follows it: kept as a symlink, and the rebuilt index
        # replaces the link itself (rename), not what it points to.
        return store.keep_corrupt_symlink()
    if store.index_too_large():
        # Reading it would take the host's memory: kept by a link, as it is, unread.
        return store.keep_corrupt_link()
    raw = store.read_index_bytes() or b""
    return store.keep_corrupt_copy(raw)  # a copy: the corrupt index stays until replaced by rename


def _check_unlisted_images(store: CacheStore, index: CacheIndex, digests: dict[str, Digest | None],
                           report: FsckReport, *, repair: bool) -> None:
    """Images on disk that no path lists: orphans (a warning) or damage (moved to lost+found)."""
    for image_id in sorted(set(digests) - index.all_image_ids()):
        digest = digests[image_id]
        if digest is not None and digest.sha1 == image_id:
            report.warnings.append(f"{store.image_path(image_id)}: orphaned image, listed by no path "
                                   "('bootwatch clean' removes it)")
            continue
        # Writers only rename complete files to <id>.img, so an unlisted one that does not hash
        # to its name is damage, not an interrupted write. Left in place it passed for a good
        # copy (add trusted the name) and salvage after a corrupt index left it there.
        problem = "cannot be read" if digest is None else f"is corrupt: its content hashes to {digest.sha1}"
        report.problems.append(f"{store.image_path(image_id)}: unlisted image {problem}")
        if repair:
            kept = store.move_to_lost_found(image_id, ".corrupt")
            report.repaired.append(f"moved the bad image to {kept}")


def _mark_merged_copies(store: CacheStore, copies: list[Path], report: FsckReport) -> None:
    """Mark the kept copies merged into the index just written as superseded.

    Only now, with the index that holds what they knew in place, may images go again; a copy that
    could not be read was merged into nothing (it is not in ``copies``) and keeps blocking deletions.
    """
    merged = []
    for copy in copies:
        try:
            store.mark_superseded(copy)
        except (BootwatchError, OSError) as e:
            report.problems.append(_failure(e))
            continue
        merged.append(copy)
    if merged:
        report.repaired.append(f"merged {counted(len(merged), 'kept corrupt index', 'kept corrupt indexes')} "
                               "into the index: "
                               + ", ".join(c.name for c in merged))


def _failure(err: BootwatchError | OSError) -> str:
    if isinstance(err, BootwatchError) and err.hint:
        return f"{err} ({err.hint})"
    return describe_oserror(err) if isinstance(err, OSError) else str(err)


def _hash_images_on_disk(cache: BootCache) -> dict[str, Digest | None]:
    """Hash every ``<sha1>.img``; the value is None when it cannot be read, or changed while read
    (images are never written in place: one that changes is damaged like one that cannot be read)."""
    digests: dict[str, Digest | None] = {}
    for image_id in cache.store.image_ids_on_disk():
        try:
            digests[image_id] = cache.store.hash_image(image_id)
        except (OSError, ContentChangedError):
            digests[image_id] = None
    return digests


def _check_listed_images(cache: BootCache, index: CacheIndex, digests: dict[str, Digest | None],
                         report: FsckReport, *, repair: bool) -> bool:
    store = cache.store
    changed = False
    for image_id in sorted(index.all_image_ids()):
        paths = index.paths_of(image_id)
        digest = digests.get(image_id) if image_id in digests else None
        recorded = index.recorded_sha256(image_id)
        if image_id not in digests:
            problem = "is missing"
        elif digest is None:
            problem = "cannot be read"
        elif digest.sha1 != image_id:
            problem = f"is corrupt: its content hashes to {digest.sha1}"
        elif isinstance(recorded, str) and recorded != digest.sha256:
            problem = "is corrupt: its SHA256 differs from the one recorded at caching time"
        else:
            continue
        report.problems.append(f"{store.image_path(image_id)}: image of {', '.join(paths)} {problem}")
        if not repair:
            continue
        if image_id in digests:
            kept = store.move_to_lost_found(image_id, ".corrupt")
            report.repaired.append(f"moved the bad image to {kept}")
            digests.pop(image_id)
        if _copy_again_from_boot(cache, index, image_id):
            report.repaired.append(f"copied {image_id} again from the boot file {paths[0]}")
            continue
        for path in paths:
            index.remove_image_from_path(path, image_id)
        changed = True
        report.repaired.append(f"dropped {image_id} from {', '.join(paths)}: no good copy is left")
    return changed


def _check_restored_markers(cache: BootCache, index: CacheIndex, report: FsckReport, *, repair: bool) -> bool:
    """Markers beside boot files that are not the file bootwatch restored (a package put its own
    back): a warning; ``repair`` drops the marker. The file is never touched."""
    changed = False
    for path in index.paths():
        restored = index.restored_file(path)
        if restored is None:
            continue
        try:
            real = cache.boot_name(path)
            if not os.path.lexists(real.parent / restored_marker_name(path)):
                continue
            gone = not os.path.lexists(real)
            if not gone and restored.is_file(identity_at(real)):
                continue
        except (OSError, UnsafePathError):
            continue
        txn = Transaction(cache, index)
        if gone:
            if not restored.made_marker:
                continue  # the marker was there before the restore (boom's): left for boom
            report.warnings.append(f"{real}: the file bootwatch restored is gone, but the .boomrestored marker "
                                   "bootwatch made for it is not")
            if repair:
                txn.forget_restored_copy(path)
                report.repaired.append(f"removed the marker of {real}, whose restored file is gone")
        else:
            report.warnings.append(f"{real}: replaced or changed since bootwatch restored it; its .boomrestored "
                                   "marker is stale (the file is never deleted by bootwatch)")
            if repair:
                txn.drop_stale_marker(path, real)
                report.repaired.append(f"removed the stale marker of {real}")
        changed |= txn.dirty
    return changed


def _copy_again_from_boot(cache: BootCache, index: CacheIndex, image_id: str) -> bool:
    """Re-cache ``image_id`` from a boot file of one of its paths that still has that content."""
    for path in index.paths_of(image_id):
        try:
            fd = open_regular(cache.boot_file(path))
        except (OSError, UnsafePathError):
            continue
        try:
            with cache.store.temp_file() as tmp:
                os.fchmod(tmp.fd, 0o644)
                try:
                    digest, _ = hash_file(fd, tmp.fd, path=cache.boot_file(path))
                except ContentChangedError:  # being written: not a copy of anything
                    continue
                if digest.sha1 != image_id:
                    continue
                cache.store.commit_image(tmp, image_id)
                return True
        finally:
            os.close(fd)
    return False


# ------------------------------------------------------------------------------------ salvage

# "path": ["id", "id"] inside a truncated or mangled index.
_INDEX_ENTRY = re.compile(r'"(/[^"\\]*)"\s*:\s*\[\s*((?:"[0-9a-f]{40}"\s*,?\s*)+)\]')
_ID = re.compile(r'"([0-9a-f]{40})"')


@dataclass
class _OldEntries:
    """What corrupt indexes knew, as far as it can be read: path -> ids, path -> ``paths`` entry,
    id -> ``images`` entry. Untrusted: each value is checked where it is used."""

    index: dict[str, object] = field(default_factory=dict)
    paths: dict[str, object] = field(default_factory=dict)
    images: dict[str, object] = field(default_factory=dict)

    def add(self, other: _OldEntries) -> None:
        """Take what ``other`` knows and this does not (the first copy read wins)."""
        for target, source in ((self.index, other.index), (self.paths, other.paths), (self.images, other.images)):
            for key, value in source.items():
                target.setdefault(key, value)


def _old_entries(raw: bytes | None) -> _OldEntries:
    """The entries of whatever the old index holds: its tables if it is JSON, else the
    ``"path": ["id", ...]`` entries found in its text."""
    text = (raw or b"").decode("utf-8", errors="replace")
    old = _OldEntries()
    try:
        data = parse_json(text)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        for key, target in (("index", old.index), ("paths", old.paths), ("images", old.images)):
            value = data.get(key)
            if isinstance(value, dict):
                target.update({k: v for k, v in value.items() if isinstance(k, str)})
    else:
        for match in _INDEX_ENTRY.finditer(text):
            old.index.setdefault(match.group(1), _ID.findall(match.group(2)))
    return old


def _read_copies(store: CacheStore, copies: list[Path], report: FsckReport) -> tuple[_OldEntries, list[Path]]:
    """What the kept ``copies`` know, and the copies that could not be read (reported as problems)."""
    old = _OldEntries()
    unmerged: list[Path] = []
    for copy in copies:
        try:
            if stat.S_ISLNK(os.stat(copy.name, dir_fd=store.fd, follow_symlinks=False).st_mode):
                continue  # a symlinked index, kept as it was: never followed, so nothing to salvage
            raw = store.read_corrupt_copy(copy)
        except OSError as e:
            unmerged.append(copy)
            if _not_a_copy(store, copy) is None:  # a non-file was reported when the copies were listed
                why = (e.strerror or str(e)) if isinstance(e, (NotRegularFileError, FileTooLargeError)) else \
                    f"cannot be read: {os.strerror(e.errno).lower() if e.errno else e}"
                report.problems.append(_unmergeable(copy, why))
            continue
        old.add(_old_entries(raw))
    return old, unmerged


@dataclass
class _Entries:
    """The ``paths`` and ``images`` entries of a rebuilt index: the old ones where they are valid,
    else made from the boot file and the image file."""

    cache: BootCache
    old: _OldEntries
    good: dict[str, Digest]  # the images on disk that hash to their ids

    def path_meta(self, path: str) -> dict[str, Any]:
        old = self.old.paths.get(path)
        if isinstance(old, dict) and valid_path_meta(old):
            return dict(old)
        try:
            st = os.stat(self.cache.boot_file(path))
            return {"path_mode": st.st_mode, "path_uid": st.st_uid, "path_gid": st.st_gid, "path_attrs": {}}
        except (OSError, UnsafePathError):
            return {"path_mode": DEFAULT_MODE, "path_uid": 0, "path_gid": 0, "path_attrs": {}}

    def image_entry(self, image_id: str) -> dict[str, Any]:
        store = self.cache.store
        old = self.old.images.get(image_id)
        entry: dict[str, Any] = dict(old) if isinstance(old, dict) and valid_image_entry(old) else \
            {"image_ts": int(os.stat(store.image_path(image_id).name, dir_fd=store.fd, follow_symlinks=False).st_mtime)}
        extra = entry.get("bootwatch")
        if not isinstance(extra, dict):
            extra = {}
        entry["bootwatch"] = {**extra, "sha256": self.good[image_id].sha256, "size": self.good[image_id].size}
        return entry


def _salvage(cache: BootCache, base: CacheIndex, copies: list[Path], digests: dict[str, Digest | None],
             report: FsckReport, *, place_unassigned: bool) -> tuple[CacheIndex, list[Path]]:
    """``base`` with what can be salvaged of the corrupt ``copies``: their paths that ``base``
    lacks, with the images that still hash to their ids; and the copies that could not be read
    (reported as problems: they must not be marked superseded).

    With ``place_unassigned`` (``base`` stands for a corrupt index) the good images that no path
    claims are matched against the boot files, and otherwise kept in ``lost+found/``.
    """
    store = cache.store
    old, unmerged = _read_copies(store, copies, report)
    good = {i: d for i, d in digests.items() if d is not None and d.sha1 == i}
    entries = _Entries(cache, old, good)
    data = base.raw()
    _add_old_paths(data, entries, report)
    if place_unassigned:
        _match_unassigned_images(cache, data, entries)
        for image_id in sorted(set(good) - set(data["images"])):
            kept_at = store.move_to_lost_found(image_id)
            report.warnings.append(f"{kept_at}: image matches no known path; kept for an administrator")
    index = CacheIndex(data)
    CacheIndex.validate(data, source=store.index_path)
    report.repaired.append(f"rebuilt the index with {counted(len(index), 'path')} and "
                           f"{counted(len(index.all_image_ids()), 'image')}")
    return index, unmerged


def _add_old_paths(data: dict[str, dict[str, Any]], entries: _Entries, report: FsckReport) -> None:
    """Add to the index ``data`` the old paths it lacks, with their images that are good."""
    for path, ids in entries.old.index.items():
        if path in data["index"]:
            continue  # the index knows it: what it says is newer than a corrupt copy
        try:
            normalize_boot_path(path)
        except UnsafePathError:
            report.repaired.append(f"dropped the unsafe path {path!r}")
            continue
        kept = [i for i in ids if isinstance(i, str) and i in entries.good] if isinstance(ids, list) else []
        if not kept:
            continue
        data["index"][path] = list(dict.fromkeys(kept))
        data["paths"][path] = entries.path_meta(path)
        for image_id in kept:
            if image_id not in data["images"]:
                data["images"][image_id] = entries.image_entry(image_id)


def _not_a_copy(store: CacheStore, copy: Path) -> str | None:
    """What ``copy`` is if it is no kept copy bootwatch makes (a regular file or a symlink), else None."""
    try:
        mode = os.stat(copy.name, dir_fd=store.fd, follow_symlinks=False).st_mode
    except OSError:
        return None  # gone, or an error the read reports
    return None if stat.S_ISREG(mode) or stat.S_ISLNK(mode) else file_kind(mode)


def _unmergeable(copy: Path, why: str) -> str:
    """The one line for a kept copy whose content cannot be merged: it keeps blocking deletions."""
    return (f"{copy}: a kept corrupt index that {why}; nothing could be merged from it, so no image is "
            "deleted while it is there: inspect it, and move it out of the cache directory by hand once "
            "nothing in it needs recovering")


def _match_unassigned_images(cache: BootCache, data: dict[str, dict[str, Any]], entries: _Entries) -> None:
    """Give unassigned images back to the boot files (referenced or at the top level) that hold them.

    Only boot files whose size equals an unassigned image's size are hashed.
    """
    unassigned: dict[int, list[str]] = {}
    for image_id, digest in entries.good.items():
        if image_id not in data["images"]:
            unassigned.setdefault(digest.size, []).append(image_id)
    if not unassigned:
        return
    candidates = set(cache.references())
    with contextlib.suppress(OSError), os.scandir(cache.boot_dir) as it:
        candidates.update("/" + e.name for e in it if e.is_file(follow_symlinks=False))
    for path in sorted(candidates):
        if path in data["index"]:
            continue
        try:
            real = cache.boot_file(path)
            st = os.stat(real)
        except (OSError, UnsafePathError):
            continue
        if not unassigned.get(st.st_size):
            continue
        try:
            digest, signature = hash_path(real)
        except (OSError, ContentChangedError):  # being rewritten: not a version to give an image to
            continue
        image_id = digest.sha1
        if image_id not in unassigned[st.st_size]:
            continue
        data["index"][path] = [image_id]
        data["paths"][path] = entries.path_meta(path)
        data["paths"][path]["bootwatch"] = {"stat": signature.to_json(), "stat_image_id": image_id}
        data["images"][image_id] = entries.image_entry(image_id)
        unassigned[st.st_size].remove(image_id)
