"""Reconciling the cache with the boot directory: the policy that the daemon and ``scan`` share.

For each boot path that matters (named by a BLS entry, already cached, or with
``track = "all"`` a file matching ``[cache] patterns``) the policy decides:

- the boot file exists and is tracked: cache it. Its stat signature is compared with the one
  recorded in the index first, so an unchanged file is not read at all;
- the boot file is gone and an entry still references it: restore it from the cache
  (``auto_restore``), or report it missing;
- the boot file is gone and nothing references it: the package manager removed it with its
  entry; nothing to restore, and a copy that bootwatch restored earlier is taken away again;
- a cached image that vanished or rotted in the cache directory is copied again from the boot
  file when that still has the same content.

References are read when the batch is applied, after the settle window, not when the event
arrived: a kernel removed 100 ms before its entry is therefore not restored.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bootwatch.cache.fileid import identity_at
from bootwatch.cache.hashing import hash_path
from bootwatch.cache.headroom import HeadroomError
from bootwatch.cache.index import SignatureTable, is_image_id
from bootwatch.cache.operations import (
    RESTORE_TEMP_PREFIX,
    AddOutcome,
    BootCache,
    PathState,
    Transaction,
    dangling_link,
)
from bootwatch.cache.policy import names_pattern, tracks_all
from bootwatch.cache.references import References
from bootwatch.cache.signatures import read_signatures
from bootwatch.cache.store import IMAGE_SUFFIX, MARKER_SUFFIX, marker_path_of, restored_marker_name
from bootwatch.config import Config
from bootwatch.entries.inventory import Inventory
from bootwatch.errors import (
    BootwatchError,
    ContentChangedError,
    NotRegularFileError,
    OpenForWritingError,
    StorageError,
    UnsafePathError,
)
from bootwatch.log import Event, IoErrorLog, boot_entries, counted, log_event, short_id
from bootwatch.safety import file_kind

if TYPE_CHECKING:
    from bootwatch.cache.writecheck import BrokenImage
    from bootwatch.entries.model import FileRole

log = logging.getLogger("bootwatch.cache.reconcile")

def has_marker(path: str, markers: AbstractSet[str]) -> bool:
    """Whether a walk that saw the markers ``markers`` saw one beside ``path``."""
    return bool(markers) and marker_path_of(path) in markers


def unchanged_walked(table: SignatureTable, files: Mapping[str, os.stat_result | None],
                     references: Mapping[str, int], markers: AbstractSet[str]) -> dict[str, str]:
    """The walked files a full pass leaves alone without reading them, with the image each holds
    (which must be on disk as well): both the lock-free pass and the full pass decide so.

    A regular file (a symlink's signature would be its target's; the per-path pass resolves it)
    that is unchanged since it was hashed to its path's newest image
    (:meth:`SignatureTable.newest_image_of`), unless it may be a restored copy to take away:
    nothing references it and a marker lies beside it. Only the per-path pass can tell that (it
    compares the file's identity with the record of the restore), so it is left to that one.
    """
    found: dict[str, str] = {}
    newest_image_of, is_regular = table.newest_image_of, stat.S_ISREG  # looked up once: 10,000 files
    for path, st in files.items():
        if st is None or not is_regular(st.st_mode):
            continue
        image_id = newest_image_of(path, st)
        if image_id is not None and not (markers and not references.get(path) and has_marker(path, markers)):
            found[path] = image_id
    return found


@dataclass
class BootTree:
    """What one walk of the boot directory saw.

    ``files``: the regular files and symlinks whose names match the patterns, by boom-style path,
    with their lstat. ``markers``: the boom-style paths of every ``.<name>.boomrestored`` entry in
    the walked directories (the walk skips dot files otherwise), so that a pass can tell a restored
    copy from the set instead of resolving every path to look for its marker. ``restore_temps``:
    the restore temp files it saw (left by a killed restore; removed by the next full pass).
    ``directories``: the absolute names of the directories it listed (a scan proof records them).
    """

    files: dict[str, os.stat_result] = field(default_factory=dict)
    directories: list[str] = field(default_factory=list)
    markers: set[str] = field(default_factory=set)
    restore_temps: list[Path] = field(default_factory=list)


@dataclass
class PassInputs:
    """What a complete pass looked at: the absolute names of the directories of the boot directory
    it listed, the cache keys it examined, and the entries it read them from (a scan proof records
    them)."""

    directories: list[str]
    paths: list[str]
    inventory: Inventory | None = None


@dataclass
class ReconcileReport:
    """What one pass did; the daemon logs it and ``scan`` prints it."""

    examined: int = 0
    hashed: int = 0
    cached: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    recopied: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    unrestored: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    retry: set[str] = field(default_factory=set)
    removed_temp_files: list[str] = field(default_factory=list)
    # Why the references were unknown during the pass (see cache.references.References); None: they were known.
    references_unknown: str | None = None
    # New images of kernels and initramfs images that failed their check when they were cached.
    written_broken: list[BrokenImage] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["retry"] = sorted(self.retry)
        data["written_broken"] = [broken.to_json() for broken in self.written_broken]
        return data


class Reconciler:
    """Applies the policy of one configuration to one cache, inside a :class:`Transaction`."""

    def __init__(self, config: Config, cache: BootCache) -> None:
        self.config = config
        self.cache = cache
        self.boot_dir = Path(os.path.abspath(config.paths.boot))
        self.boot_real = Path(os.path.realpath(self.boot_dir))
        # Directories inside the boot directory that hold no boot images.
        self.skip_dirs = {os.path.realpath(p) for p in (config.paths.cache, config.paths.entries)}
        self.names = names_pattern(config.cache.patterns)
        # Paths reported missing once; not reported again on every pass.
        self.reported_missing: set[str] = set()
        # Where the daemon wants a failing cache file system reported (once per file and errno);
        # without it (scan) each error is a warning line.
        self.io_errors: IoErrorLog | None = None
        # Why lost+found/ could not take a corrupt image, as last reported (said once, not per batch).
        self.lost_found_problem: str | None = None
        # Tracked paths whose boot file is no regular file (a FIFO...): warned about once.
        self.reported_not_regular: set[str] = set()
        # What the last complete pass (unchanged_pass that concluded, or full) looked at.
        self.last_inputs: PassInputs | None = None
        # The pass's new images to check (see bootwatch.cache.writecheck): path, image id, the
        # roles entries give the path; and those roles by cache key, read when first needed.
        self._written: list[tuple[str, str, frozenset[FileRole]]] = []
        self._roles: dict[str, frozenset[FileRole]] | None = None

    # ---------------------------------------------------------------- which paths

    def boot_path_of(self, filename: str) -> str | None:
        """The cache key of an absolute file name inside the boot directory or on the ESP, else None."""
        for root in (self.boot_dir, self.boot_real):
            prefix = str(root).rstrip("/") + "/"
            if filename.startswith(prefix):
                relative = filename[len(prefix):]
                name = relative.rsplit("/", 1)[-1]
                if not relative or name.startswith("."):
                    return None  # dot files: boom's markers, our restore temp files, editors' swaps
                return "/" + relative
        esp = self.cache.esp()
        if esp is not None and filename.startswith(str(esp).rstrip("/") + "/"):
            if filename.rsplit("/", 1)[-1].startswith("."):
                return None
            return "/" + os.path.relpath(filename, self.boot_real)
        return None

    def walk(self) -> BootTree:
        """Every regular file and symlink of the boot directory matching the patterns, with its lstat.

        Used with ``track = "all"``; symlinks are resolved later through :meth:`BootCache.boot_file`.
        Directories are entered only as themselves, from the real boot directory: ``d_type`` (or an
        lstat) says directory, and the open uses ``O_NOFOLLOW``, so a directory swapped for a
        symlink meanwhile is not followed. A walked path therefore has no symlink in it, and the
        file it names lies inside the boot directory without resolving it.

        Each file is lstat'ed relative to its directory's fd (``fstatat``): the kernel looks up
        one name instead of the whole path, 10,000 times on a big tree.
        """
        tree = BootTree()
        root = str(self.boot_real).rstrip("/")  # "" for a boot directory of "/"
        pending = [""]  # boom-style paths of the directories to read; "" is the boot directory
        while pending:
            directory = pending.pop()
            tree.directories.append(root + directory or "/")
            try:
                fd = os.open(root + directory or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                prefix = directory + "/"
                for name in self._scan_directory(fd, root, directory, tree, pending):
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                        tree.files[prefix + name] = st
            finally:
                os.close(fd)
        return tree

    def _scan_directory(self, fd: int, root: str, directory: str, tree: BootTree, pending: list[str]) -> list[str]:
        """One directory of :meth:`walk`: the names matching the patterns, its markers and restore
        temp files noted in ``tree``, its subdirectories (but lost+found and the cache's and
        entries' own) added to ``pending``."""
        match, skip_dirs = self.names.match, self.skip_dirs
        names = []
        with os.scandir(fd) as it:
            for entry in it:
                name = entry.name
                if name[0] == ".":
                    if name.endswith(MARKER_SUFFIX):
                        tree.markers.add(f"{directory}/{name}")
                    elif name.startswith(RESTORE_TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                        # (only a regular file can be one; see BootCache._stale_restore_temp_files)
                        tree.restore_temps.append(Path(f"{root}{directory}/{name}"))
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if name != "lost+found" and f"{root}{directory}/{name}" not in skip_dirs:
                            pending.append(f"{directory}/{name}")
                        continue
                except OSError:
                    continue
                if match(name) is not None:
                    names.append(name)
        return names

    def is_tracked(self, path: str, references: dict[str, int]) -> bool:
        if references.get(path, 0):
            return True
        return tracks_all(self.config) and self.names.match(path[path.rfind("/") + 1:]) is not None

    # ---------------------------------------------------------------- passes

    def unchanged_pass(self) -> ReconcileReport | None:
        """A full pass that proves nothing changed, or None: then :meth:`full` must run.

        Takes no lock and does not parse the index: it hashes the index file only to find its
        signature table (signatures.py), then walks the boot directory. It concludes "nothing to
        do" exactly when :meth:`full` would find every path unchanged (:func:`unchanged_walked`,
        the rule :meth:`full` applies too): every walked file is cached and unchanged, and its
        image is on disk; every referenced path is among them. Cached paths that are gone and
        that nothing references are reported missing, as :meth:`full` reports them. The index
        read is the moment the pass stands for: a writer that changes the index afterwards only
        makes it one pass older.

        Unknown references (see :class:`bootwatch.cache.references.References`) forbid taking anything
        away, not concluding that nothing changed: this pass takes nothing away, and leaves to
        :meth:`full` every file that might be a restored copy to take away. Its report says why
        they are unknown, as the full pass's does. A changed reference set is recorded by the
        next pass under the lock, not by this one, which takes none (the daemon applies every
        change of the entries under the lock).

        Only with ``track = "all"``: otherwise :meth:`full` resolves a few paths one by one and
        is as quick.
        """
        self.last_inputs = None
        if not tracks_all(self.config):
            return None
        store = self.cache.store
        store.check()
        digest = store.index_file_digest()
        table = None if digest is None else read_signatures(store, digest)
        if table is None:
            return None
        references = self.cache.references()
        if references.boot_moved:
            return None  # the full pass reports it, and reconciles nothing
        tree = self.walk()
        if tree.restore_temps or store.has_temp_files():
            return None  # left by a killed writer: the full pass removes them under the lock
        if not tree.files.keys() >= references.keys():
            return None  # a referenced path the walk did not see
        unchanged = unchanged_walked(table, tree.files, references, tree.markers)
        if len(unchanged) != len(tree.files) or not store.has_images(set(unchanged.values())):
            return None  # a file to cache or to look at, or an image to copy again
        gone = self._gone_unreferenced(table, tree)
        if gone is None:
            return None
        report = ReconcileReport(examined=len(tree.files) + len(gone), references_unknown=references.unknown)
        self.reported_missing.intersection_update(gone)
        for path, newest in gone.items():
            self._report_missing(path, 0, newest, report)
        self.last_inputs = PassInputs(tree.directories, sorted(tree.files.keys() | gone.keys()), references.inventory)
        return report

    def _gone_unreferenced(self, table: SignatureTable, tree: BootTree) -> dict[str, str] | None:
        """The cached paths the walk did not see (none referenced, the caller checked), with their
        newest image, if each is gone from the boot directory: the full pass would only report it
        missing (the package manager removed it with its entry; clean drops it later). None if the
        full pass must look at one."""
        gone: dict[str, str] = {}
        root = str(self.boot_real).rstrip("/")
        for path in sorted(table.entries.keys() - tree.files.keys()):
            newest = table.newest_recorded(path)
            if newest is None or has_marker(path, tree.markers):
                return None  # a marker beside a gone file: the full pass removes it if bootwatch made it
            try:
                os.lstat(root + path)
                return None  # it exists where the walk does not look: the full pass resolves it
            except FileNotFoundError:
                gone[path] = newest
            except OSError:
                return None
        return gone

    def full(self, txn: Transaction) -> ReconcileReport:
        """One complete pass: every referenced, cached or (``track = "all"``) matching path."""
        txn.record_signatures = tracks_all(self.config)
        self.last_inputs = None
        report = ReconcileReport()
        references = txn.refresh_references()
        if self._boot_moved(references, report):
            return report
        self._start_pass()
        stats: dict[str, os.stat_result | None] = {}
        markers: set[str] = set()
        restore_temps: list[Path] = []
        directories: list[str] = []
        if tracks_all(self.config):
            tree = self.walk()
            stats.update(tree.files)
            markers, restore_temps, directories = tree.markers, tree.restore_temps, tree.directories
        # Under the lock every temp file is one a killed run left (its copy of an image or a restore).
        removed = txn.removed_temp_files + self.cache.remove_stale_temp_files(txn.index, restore_temps)
        report.removed_temp_files = [str(p) for p in removed]
        if report.removed_temp_files:
            log.info("removed %s left by an interrupted run: %s", counted(len(report.removed_temp_files), "temp file"),
                     ", ".join(report.removed_temp_files))
        for path in list(references) + txn.index.paths():
            stats.setdefault(path, None)
        on_disk = txn.images_on_disk()
        # The unchanged files need nothing but to be counted (and, existing, not reported missing).
        unchanged = {path for path, image_id in unchanged_walked(txn.index.signatures(), stats, references,
                                                                 markers).items() if image_id in on_disk}
        report.examined += len(unchanged)
        self.reported_missing.difference_update(unchanged)
        for path in sorted(stats.keys() - unchanged):
            self.reconcile_path(txn, path, references, report, on_disk=on_disk, lstat=stats[path], markers=markers)
        self.check_written(txn, references, report)
        self.last_inputs = PassInputs(directories, sorted(stats), references.inventory)
        return report

    def paths(self, txn: Transaction, paths: Iterable[str], *, entries_changed: bool) -> ReconcileReport:
        """A pass over the paths events named; all referenced and cached paths if entries changed."""
        report = ReconcileReport()
        references = txn.refresh_references()
        if self._boot_moved(references, report):
            return report
        self._start_pass()
        selected = set(paths)
        if entries_changed:
            selected.update(references)
            selected.update(txn.index.paths())
        on_disk = txn.images_on_disk()
        for path in sorted(selected):
            self.reconcile_path(txn, path, references, report, on_disk=on_disk)
        self.check_written(txn, references, report)
        return report

    @staticmethod
    def _boot_moved(references: References, report: ReconcileReport) -> bool:
        """Note unknown references in the report; True if the boot directory is not the
        filesystem it was: then there is nothing to reconcile (every file would look removed,
        and a restore would write onto the wrong filesystem)."""
        report.references_unknown = references.unknown
        return references.boot_moved

    # ---------------------------------------------------------------- one path

    def reconcile_path(self, txn: Transaction, path: str, references: References, report: ReconcileReport, *,
                       on_disk: set[str], lstat: os.stat_result | None = None,
                       markers: set[str] | None = None) -> None:
        """Apply the policy to one path; what goes wrong is reported, never raised.

        ``lstat`` and ``markers`` come from :meth:`walk`: the lstat of the walked file, and the
        markers the walk saw. Without them the path is resolved and its marker looked up.
        """
        report.examined += 1
        try:
            if references.absent is not None and references.is_absent(self.cache.boot_name(path)):
                return  # on the ESP, which is not mounted as it was: its files only look gone
            self._reconcile_path(txn, path, references, report, on_disk, lstat, markers)
        except NotRegularFileError as e:
            # Found a regular file, opened something else (swapped in since), or a kernel file
            # (procfs) that passes for one: as a FIFO at the path.
            self._report_not_regular(path, str(e))
        except UnsafePathError as e:
            report.errors.append(str(e))
            log.warning("%s", e)
        except ContentChangedError as e:
            # Being written (the usual case: caught between an install's writes): the writer's
            # close, or the retry, brings it back. Not cached, and not worth a warning.
            report.errors.append(str(e))
            report.retry.add(path)
            log.info("%s; trying again later", e)
        except StorageError as e:
            report.errors.append(str(e))
            if e.errno != errno.EROFS:  # a read-only cache stays so until someone remounts it
                report.retry.add(path)
            if self.io_errors is not None:
                self.io_errors.report(e.filename, e.errno, str(e), hint=e.hint)
            else:
                log.warning("%s", e)
        except BootwatchError as e:
            report.errors.append(str(e))
            report.retry.add(path)
            log.warning("%s", e)
        except OSError as e:
            report.errors.append(f"{path}: {e}")
            report.retry.add(path)
            log.warning("%s: %s", path, e)

    def _reconcile_path(self, txn: Transaction, path: str, references: References, report: ReconcileReport,
                        on_disk: set[str], lstat: os.stat_result | None, markers: set[str] | None) -> None:
        """:meth:`reconcile_path`, raising what goes wrong: the boot file is there, gone, or no regular file."""
        real: Path | None = None  # resolved only when the walk did not stat the file itself
        boot_st: os.stat_result | None = lstat
        if lstat is None or stat.S_ISLNK(lstat.st_mode):
            real = self.cache.boot_file(path)
            try:
                boot_st = os.stat(real)
            except FileNotFoundError:
                boot_st = None
        if boot_st is None:
            self._reconcile_gone(txn, path, references, report, on_disk)
        elif not stat.S_ISREG(boot_st.st_mode):
            if path in txn.index or self.is_tracked(path, references):
                where = real if real is not None else self.cache.boot_file(path)
                self._report_not_regular(path, f"{where}: is a {file_kind(boot_st.st_mode)}, not a regular file; "
                                               "not caching it")
        else:
            self._reconcile_present(txn, path, references, report, on_disk, boot_st, real, markers)

    def _reconcile_present(self, txn: Transaction, path: str, references: References, report: ReconcileReport,
                           on_disk: set[str], boot_st: os.stat_result, real: Path | None,
                           markers: set[str] | None) -> None:
        """The boot file is a regular file: take away bootwatch's restored copy that nothing
        needs any more, or cache the file unless it is unchanged (:meth:`SignatureTable.image_of`)."""
        self.reported_missing.discard(path)
        self.reported_not_regular.discard(path)
        index = txn.index
        cached = path in index
        if cached and self._took_restored_copy_away(txn, path, references, report, boot_st, real, markers):
            return
        if not self.is_tracked(path, references):
            return
        image_id = index.signatures([path]).newest_image_of(path, boot_st)
        if image_id is not None and image_id in on_disk:
            return  # unchanged since it was hashed, and its image is there: nothing to read
        newest = index.newest(path) if cached else None
        image_gone = newest is not None and newest not in on_disk
        if image_gone:
            report.broken.append(path)
            log_event(log, Event.IMAGE_BROKEN, "%s: cached image %s is gone from the cache", path, short_id(newest),
                      level=logging.WARNING, path=path, image_id=newest, state=PathState.BROKEN)
        report.hashed += 1
        roles = self._checked_roles(path, references)
        if roles is not None and cached and not image_gone:
            assert newest is not None
            self._check_once(txn, path, newest, roles)  # so that trimming knows whether to keep it
        result = txn.add(path)
        on_disk.add(result.image_id)
        if roles is not None and result.outcome is not AddOutcome.UNCHANGED:
            self._written.append((path, result.image_id, roles))
        if result.outcome is AddOutcome.CACHED:
            report.cached.append(path)
            log_event(log, Event.IMAGE_CACHED, "%s: cached as image %s", path, short_id(result.image_id),
                      path=path, image_id=result.image_id, state=PathState.CACHED)
        elif result.outcome is AddOutcome.CHANGED:
            report.changed.append(path)
            log_event(log, Event.IMAGE_CHANGED, "%s: content changed, new image %s (was %s)", path,
                      short_id(result.image_id), short_id(result.previous_id), path=path,
                      image_id=result.image_id, state=PathState.CACHED, previous_image_id=result.previous_id)
        elif image_gone:
            report.recopied.append(path)
            log.info("%s: copied image %s again from the boot file", path, short_id(result.image_id))

    # ---------------------------------------------------------------- the check of new images

    def _start_pass(self) -> None:
        self._written, self._roles = [], None

    def _checked_roles(self, path: str, references: References) -> frozenset[FileRole] | None:
        """The roles the entries give ``path`` if its new images are checked when cached (see
        :mod:`bootwatch.cache.writecheck`): empty with ``track = "all"`` for a path no entry names
        as a kernel, initrd or UKI (then its content decides); None if they are not checked."""
        if self._roles is None:
            from bootwatch.cache.writecheck import roles_by_key  # and the format checks: only when caching
            self._roles = roles_by_key(references.inventory)
        roles = self._roles.get(path)
        if roles:
            return roles
        return frozenset() if tracks_all(self.config) else None

    def _check_once(self, txn: Transaction, path: str, image_id: str, roles: frozenset[FileRole]) -> bool | None:
        """Check the cached image ``image_id`` of ``path`` if it never was, recording the result
        (an image cached before checks were made, or by boom); whether its last check passed
        (None: not one to check, or its check was cut off)."""
        from bootwatch.cache.writecheck import check_written
        verified = txn.index.verification(image_id)
        if verified is not None and not verified["unchecked"]:
            return bool(verified["ok"])
        txn.flush()  # an image added in this pass gets its final name before it is read
        result = check_written(self.cache, txn.index, image_id, roles)
        if result is None or result.unchecked:
            return None
        txn.record_verification(result)
        return result.ok

    def check_written(self, txn: Transaction, references: References, report: ReconcileReport) -> None:
        """Check the images the pass cached for kernels and initramfs images, record the results,
        and report each that is broken at once (journal), naming the command that puts the
        previous good image back."""
        written, self._written = self._written, []
        if not written:
            return
        from bootwatch.cache.writecheck import BrokenImage, check_written, previous_good
        txn.flush()  # the images get their final names: what is checked is the cached image file
        for path, image_id, roles in written:
            if path not in txn.index or image_id not in txn.index.image_ids(path):
                continue
            result = check_written(self.cache, txn.index, image_id, roles)
            if result is None:
                continue
            txn.record_verification(result)
            if not result.failed:
                continue
            for older in txn.index.images_newest_first(path):  # those never checked, to name a good one
                if older != image_id and txn.cache.store.has_image(older) and self._check_once(txn, path, older, roles):
                    break
            broken = BrokenImage(path, image_id, result.message, previous_good(txn.index, path, image_id))
            report.written_broken.append(broken)
            log_event(log, Event.IMAGE_WRITTEN_BROKEN, "%s: the new image %s written there is broken: %s; %s",
                      path, image_id, broken.problem, broken.remedy(), level=logging.ERROR, path=path,
                      image_id=image_id, state=PathState.CACHED, previous_image_id=broken.good_image_id,
                      reason=broken.problem, restore_command=broken.restore_command)

    def _took_restored_copy_away(self, txn: Transaction, path: str, references: References,
                                 report: ReconcileReport, boot_st: os.stat_result, real: Path | None,
                                 markers: set[str] | None) -> bool:
        """Judge a cached path's boot file as a restored copy; True if nothing more is to be done.

        Marked as restored but not the file bootwatch wrote: someone put it back (a package
        manager, by rename, maybe with the same content); it is theirs and its marker goes.
        bootwatch's very copy that no entry references any more (a package manager removed both):
        it is taken away again, but never while references are unknown.
        """
        ours = self._is_our_restored_copy(txn, path, boot_st, real, markers)
        if ours is False:
            txn.drop_stale_marker(path, self.cache.boot_name(path))
            return False
        if not ours or references.get(path, 0) or references.unknown is not None:
            return False
        if txn.remove_restored_copy(path):
            report.unrestored.append(path)
            log.info("%s: removed the restored copy: no boot entry references it any more", path)
        return True

    def _reconcile_gone(self, txn: Transaction, path: str, references: References, report: ReconcileReport,
                        on_disk: set[str]) -> None:
        """The boot file is gone: restore it while an entry references it (``auto_restore``), else
        report it missing."""
        if path not in txn.index:
            return
        # So is the file a restore wrote, if any (and the marker bootwatch made for it): a marker
        # beside a later file of that name would make it look restored.
        txn.forget_restored_copy(path)
        newest = txn.index.newest(path)
        count = references.get(path, 0)
        if not (count and self.config.cache.auto_restore and newest in on_disk):
            self._report_missing(path, count, newest, report)
            return
        link = dangling_link(self.cache.boot_name(path))
        if link is not None:  # restoring would write what the link names: another path
            self._report_missing(path, count, newest, report,
                                 f"not restored: it is a symlink to {link}, which does not exist, and bootwatch "
                                 "never restores through a symlink")
            return
        try:
            image_id = txn.restore(path)
        except HeadroomError as e:
            self._report_refused(path, count, newest, report, e)
            return
        report.restored.append(path)
        self.reported_missing.discard(path)
        log_event(log, Event.IMAGE_RESTORED, "%s: restored image %s (referenced by %s)", path, short_id(image_id),
                  boot_entries(count), path=path, image_id=image_id,
                  state=PathState.RESTORED)

    def _report_refused(self, path: str, count: int, newest: str, report: ReconcileReport,
                        error: HeadroomError) -> None:
        """A restore refused for the headroom of its filesystem: an error of the pass (scan exits 1),
        not retried (only freeing space helps; the next pass over the entries tries again), and
        said once per daemon (each time for scan) while the file stays missing."""
        report.missing.append(path)
        report.errors.append(str(error))
        if path not in self.reported_missing:
            self.reported_missing.add(path)
            log_event(log, Event.RESTORE_REFUSED, "%s (referenced by %s; hint: %s)", error,
                      boot_entries(count), error.hint, level=logging.WARNING, path=path,
                      image_id=newest, state=PathState.MISSING, references=count)

    def _report_not_regular(self, path: str, problem: str) -> None:
        """Warn that a tracked path's boot file is not a regular file (nor cached, nor read), once
        per daemon (each time for scan) while it stays so."""
        if path not in self.reported_not_regular:
            self.reported_not_regular.add(path)
            log.warning("%s", problem)

    def _report_missing(self, path: str, count: int, newest: str, report: ReconcileReport,
                        note: str | None = None) -> None:
        """Report a cached path gone from the boot directory, once per daemon (each time for scan)."""
        if path not in self.reported_missing:
            self.reported_missing.add(path)
            report.missing.append(path)
            level = logging.WARNING if count else logging.INFO
            why = f"still referenced by {boot_entries(count)}" if count else "no boot entry references it"
            if note is not None:
                why += f"; {note}"
            log_event(log, Event.IMAGE_MISSING, "%s: removed from the boot directory (%s)", path, why,
                      level=level, path=path, image_id=newest, state=PathState.MISSING, references=count)

    def _is_our_restored_copy(self, txn: Transaction, path: str, boot_st: os.stat_result, real: Path | None,
                              markers: set[str] | None) -> bool | None:
        """Whether the boot file is bootwatch's restored copy: None if no marker lies beside it, or
        a marker without a record of what bootwatch wrote (boom's: the file is never deleted);
        True if it is the very file a restore wrote, unchanged since; False if it is another
        (the marker is stale). The rule is :class:`bootwatch.cache.index.RestoredFile`'s, as in
        :meth:`Transaction.remove_restored_copy`, which checks again before deleting.

        A file the walk found (``real`` None) lies, unresolved, in a walked directory, whose markers
        the walk collected: a set lookup instead of two ``realpath`` calls per path. What is
        compared is the file at the path's very name: a symlink there is never bootwatch's copy.
        The identity cannot be read (EACCES): None, nothing is decided.
        """
        restored = txn.index.restored_file(path)
        if restored is None:  # the common case, and no marker needs to be looked for
            return None
        name = self.cache.boot_name(path)
        if real is None and markers is not None:
            if not has_marker(path, markers):
                return None
        elif not os.path.lexists(name.parent / restored_marker_name(path)):
            return None
        try:
            return restored.is_file(identity_at(name))
        except OSError as e:
            log.warning("%s: cannot tell whether it is bootwatch's restored copy: %s", name, e)
            return None

    # ---------------------------------------------------------------- the cache directory

    def check_images(self, txn: Transaction, image_ids: Iterable[str], report: ReconcileReport) -> None:
        """Images someone else deleted or modified in the cache directory: mark, and copy again from /boot."""
        for image_id in sorted(set(image_ids)):
            if image_id not in txn.index.all_image_ids():
                continue
            paths = txn.index.paths_of(image_id)
            st = self.cache.store.image_stat(image_id)
            problem = self._image_problem(txn, image_id, st)
            if problem is None:
                continue
            report.broken.extend(paths)
            log_event(log, Event.IMAGE_BROKEN, "image %s of %s %s", short_id(image_id), ", ".join(paths), problem,
                      level=logging.WARNING, path=paths[0], image_id=image_id, state=PathState.BROKEN)
            if st is not None:
                self._set_aside(image_id, report)
            for path in paths:
                if self._recopy(txn, path, image_id):
                    report.recopied.append(path)
                    log.info("%s: copied image %s again from the boot file", path, short_id(image_id))
                    break

    def _image_problem(self, txn: Transaction, image_id: str, st: os.stat_result | None) -> str | None:
        """What is wrong with the image file (its stat ``st``, None if it is gone), or None: nothing,
        or it is open for writing (judged when its writer closes it, an event of its own)."""
        if st is None:
            return "was deleted from the cache"
        size = txn.index.recorded_size(image_id)
        try:
            digest = self.cache.store.hash_image(image_id, cancel=self.cache.cancel)
        except OSError as e:
            return f"cannot be read: {e.strerror}"
        except OpenForWritingError as e:
            log.info("%s; checking it when it is closed", e)
            return None
        except ContentChangedError:  # images are never written in place
            return "is being modified in the cache"
        if digest.sha1 != image_id or (size is not None and size != digest.size):
            return f"was modified in the cache (its content hashes to {short_id(digest.sha1)})"
        return None

    def _set_aside(self, image_id: str, report: ReconcileReport) -> None:
        """Move a damaged image to ``lost+found/``. A lost+found that cannot take it (a symlink, not
        ours, a read-only cache) is reported once, naming it, and does not stop the re-copy: the
        damaged file then stays where it is until a good copy replaces it (by rename, as add does).
        Nothing is ever moved anywhere but into the checked lost+found."""
        store = self.cache.store
        try:
            store.move_to_lost_found(image_id, ".corrupt")
        except (BootwatchError, OSError) as e:
            reason = str(e) if isinstance(e, BootwatchError) else \
                f"{store.lost_found_dir}: {os.strerror(e.errno).lower() if e.errno else e}"
            if reason != self.lost_found_problem:
                self.lost_found_problem = reason
                problem = (f"{reason}; damaged images are not set aside there (image {image_id} is replaced by "
                           "a fresh copy from the boot directory where that still has its content)")
                report.errors.append(problem)
                log.warning("%s%s", problem, f" (hint: {e.hint})" if isinstance(e, BootwatchError) and e.hint else "")
            return
        self.lost_found_problem = None

    def _recopy(self, txn: Transaction, path: str, image_id: str) -> bool:
        """Re-cache ``path`` if its boot file still has the content ``image_id``."""
        try:
            st = os.stat(self.cache.boot_file(path))
        except (OSError, UnsafePathError):
            return False
        known = txn.index.signatures([path]).image_of(path, st)
        if known is not None and known != image_id:
            return False
        if known is None:
            try:
                digest, _ = hash_path(self.cache.boot_file(path), cancel=self.cache.cancel)
            except (OSError, ContentChangedError):
                return False
            if digest.sha1 != image_id:
                return False
        try:
            # A damaged file may still be at the image's name (lost+found could not take it):
            # the name proves nothing, so the boot file is copied whatever is there.
            result = txn.add(path, recopy=True)
        except BootwatchError:
            return False
        txn.flush()
        return result.image_id == image_id and self.cache.store.has_image(image_id)

    def image_id_of(self, filename: str) -> str | None:
        """The image id of a ``<cache>/<sha1>.img`` file name, else None."""
        path = Path(filename)
        if path.parent != self.cache.store.directory or not path.name.endswith(IMAGE_SUFFIX):
            return None
        stem = path.name[:-len(IMAGE_SUFFIX)]
        return stem if is_image_id(stem) else None
