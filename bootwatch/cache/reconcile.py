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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bootwatch.cache.fileid import identity_at
from bootwatch.cache.hashing import StatSignature, hash_path
from bootwatch.cache.index import CacheIndex, is_image_id
from bootwatch.cache.operations import (
    RESTORE_TEMP_PREFIX,
    AddOutcome,
    BootCache,
    PathState,
    Transaction,
    dangling_link,
)
from bootwatch.cache.policy import names_pattern, tracks_all
from bootwatch.cache.signatures import read_signatures
from bootwatch.cache.store import IMAGE_SUFFIX, MARKER_SUFFIX, marker_path_of, restored_marker_name
from bootwatch.config import Config
from bootwatch.entries.bls import References
from bootwatch.errors import (
    BootwatchError,
    ContentChangedError,
    NotRegularFileError,
    OpenForWritingError,
    StorageError,
    UnsafePathError,
)
from bootwatch.log import Event, IoErrorLog, log_event
from bootwatch.safety import file_kind

log = logging.getLogger("bootwatch.cache.reconcile")

@dataclass
class BootTree:
    """What one walk of the boot directory saw.

    ``files``: the regular files and symlinks whose names match the patterns, by boom-style path,
    with their lstat. ``markers``: the boom-style paths of every ``.<name>.boomrestored`` entry in
    the walked directories (the walk skips dot files otherwise), so that a pass can tell a restored
    copy from the set instead of resolving every path to look for its marker. ``restore_temps``:
    the restore temp files it saw (left by a killed restore; removed by the next full pass).
    """

    files: dict[str, os.stat_result] = field(default_factory=dict)
    markers: set[str] = field(default_factory=set)
    restore_temps: list[Path] = field(default_factory=list)


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
    # Why the references were unknown during the pass (see bls.References); None: they were known.
    references_unknown: str | None = None

    def to_json(self) -> dict:
        data = dict(self.__dict__)
        data["retry"] = sorted(self.retry)
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

    # ---------------------------------------------------------------- which paths

    def boot_path_of(self, filename: str) -> str | None:
        """The boom-style path of an absolute file name inside the boot directory, else None."""
        for root in (self.boot_dir, self.boot_real):
            prefix = str(root).rstrip("/") + "/"
            if filename.startswith(prefix):
                relative = filename[len(prefix):]
                name = relative.rsplit("/", 1)[-1]
                if not relative or name.startswith("."):
                    return None  # dot files: boom's markers, our restore temp files, editors' swaps
                return "/" + relative
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
        files, markers = tree.files, tree.markers
        match, skip_dirs = self.names.match, self.skip_dirs
        root = str(self.boot_real).rstrip("/")  # "" for a boot directory of "/"
        pending = [""]  # boom-style paths of the directories to read; "" is the boot directory
        while pending:
            directory = pending.pop()
            try:
                fd = os.open(root + directory or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                names = []
                with os.scandir(fd) as it:
                    for entry in it:
                        name = entry.name
                        if name[0] == ".":
                            if name.endswith(MARKER_SUFFIX):
                                markers.add(f"{directory}/{name}")
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
                prefix = directory + "/"
                for name in names:
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                        files[prefix + name] = st
            finally:
                os.close(fd)
        return tree

    def is_tracked(self, path: str, references: dict[str, int]) -> bool:
        if references.get(path, 0):
            return True
        return tracks_all(self.config) and self.names.match(path[path.rfind("/") + 1:]) is not None

    # ---------------------------------------------------------------- passes

    def unchanged_pass(self) -> ReconcileReport | None:
        """A full pass that proves nothing changed, or None: then :meth:`full` must run.

        Takes no lock and does not parse the index: it hashes the index file only to find its
        signatures file (signatures.py), then walks the boot directory. It concludes "nothing to
        do" exactly when :meth:`full` would find every path unchanged (see :meth:`_unchanged`):
        every walked file is cached, a regular file whose lstat is the recorded signature of its
        newest image, and that image is on disk; every referenced path is among them; no restored
        copy lost its last reference. Cached paths that are gone and that nothing references are
        reported missing, as :meth:`full` reports them. The index read is the moment the pass
        stands for: a writer that changes the index afterwards only makes it one pass older.

        Only with ``track = "all"``: otherwise :meth:`full` resolves a few paths one by one and
        is as quick.
        """
        if not tracks_all(self.config):
            return None
        store = self.cache.store
        store.check()
        digest = store.index_file_digest()
        signatures = None if digest is None else read_signatures(store, digest)
        if signatures is None:
            return None
        references = self.cache.references()
        if references.boot_moved:
            return None  # the full pass reports it, and reconciles nothing
        # Unknown references forbid taking anything away (a restored copy, an image), never the
        # conclusion that nothing changed: this pass takes nothing away, and where the full pass
        # would (a restored copy that lost its last reference) it gives way to it. The report
        # says why they are unknown, as the full pass's does.
        # (A changed reference set is recorded by the next pass under the lock, not by this one,
        # which takes none: the daemon applies every change of the entries under the lock.)
        tree = self.walk()
        if tree.restore_temps or store.has_temp_files():
            return None  # left by a killed writer: the full pass removes them under the lock
        files = tree.files
        if not files.keys() <= signatures.keys() or not files.keys() >= references.keys():
            return None  # a file to cache, or a referenced path the walk did not see
        for path, st in files.items():
            recorded = signatures[path]
            if recorded is None or not stat.S_ISREG(st.st_mode) \
                    or recorded != (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, recorded[5]):
                return None
        if tree.markers and any(not references.get(p) and marker_path_of(p) in tree.markers for p in files):
            return None
        if not store.has_images({signatures[p][5] for p in files}):
            return None
        # Cached paths the walk did not see, none referenced: if each is gone from the boot
        # directory, the full pass would only report it missing (the package manager removed it
        # with its entry; clean drops it later).
        gone = sorted(signatures.keys() - files.keys())
        if tree.markers and any(marker_path_of(p) in tree.markers for p in gone):
            return None  # a marker beside a gone file: the full pass removes it if bootwatch made it
        root = str(self.boot_real).rstrip("/")
        for path in gone:
            if signatures[path] is None:
                return None
            try:
                os.lstat(root + path)
                return None  # it exists where the walk does not look: the full pass resolves it
            except FileNotFoundError:
                pass
            except OSError:
                return None
        report = ReconcileReport(examined=len(files) + len(gone), references_unknown=references.unknown)
        self.reported_missing.intersection_update(gone)
        for path in gone:
            self._report_missing(path, 0, signatures[path][5], report)
        return report

    def full(self, txn: Transaction) -> ReconcileReport:
        """One complete pass: every referenced, cached or (``track = "all"``) matching path."""
        txn.record_signatures = tracks_all(self.config)
        report = ReconcileReport()
        references = txn.refresh_references()
        if self._boot_moved(references, report):
            return report
        stats: dict[str, os.stat_result | None] = {}
        markers: set[str] = set()
        restore_temps: list[Path] = []
        if tracks_all(self.config):
            tree = self.walk()
            stats.update(tree.files)
            markers, restore_temps = tree.markers, tree.restore_temps
        # Under the lock every temp file is one a killed run left (its copy of an image or a restore).
        removed = txn.removed_temp_files + self.cache.remove_stale_temp_files(txn.index, restore_temps)
        report.removed_temp_files = [str(p) for p in removed]
        if report.removed_temp_files:
            log.info("removed %d temp file(s) left by an interrupted run: %s", len(report.removed_temp_files),
                     ", ".join(report.removed_temp_files))
        for path in list(references) + txn.index.paths():
            stats.setdefault(path, None)
        on_disk = txn.images_on_disk()
        # The unchanged files need nothing but to be counted (and, existing, not reported missing).
        unchanged = self._unchanged(txn.index, stats, references, markers, on_disk)
        report.examined += len(unchanged)
        self.reported_missing.difference_update(unchanged)
        for path in sorted(stats.keys() - unchanged):
            self.apply(txn, path, references, report, on_disk=on_disk, lstat=stats[path], markers=markers)
        return report

    @staticmethod
    def _unchanged(index: CacheIndex, stats: dict[str, os.stat_result | None], references: dict[str, int],
                   markers: set[str], on_disk: set[str]) -> set[str]:
        """The walked files that :meth:`apply` would leave alone without reading them.

        The common case of a full pass, decided with set and dict lookups: a regular file (not a
        symlink, so nothing to resolve), cached, not a restored copy that lost its last reference,
        its newest image on disk, and its stat signature the one recorded when it was hashed.
        (A walked file matches the patterns and is walked only with ``track = "all"``: it is
        tracked.) Anything else goes through :meth:`apply`.
        """
        candidates = {path: st for path, st in stats.items() if st is not None and stat.S_ISREG(st.st_mode)}
        if markers:
            for path in [p for p in candidates if not references.get(p) and marker_path_of(p) in markers]:
                del candidates[path]
        return index.unchanged(candidates, on_disk)

    def paths(self, txn: Transaction, paths: Iterable[str], *, entries_changed: bool) -> ReconcileReport:
        """A pass over the paths events named; all referenced and cached paths if entries changed."""
        report = ReconcileReport()
        references = txn.refresh_references()
        if self._boot_moved(references, report):
            return report
        selected = set(paths)
        if entries_changed:
            selected.update(references)
            selected.update(txn.index.paths())
        on_disk = txn.images_on_disk()
        for path in sorted(selected):
            self.apply(txn, path, references, report, on_disk=on_disk)
        return report

    @staticmethod
    def _boot_moved(references: References, report: ReconcileReport) -> bool:
        """Note unknown references in the report; True if the boot directory is not the
        filesystem it was: then there is nothing to reconcile (every file would look removed,
        and a restore would write onto the wrong filesystem)."""
        report.references_unknown = references.unknown
        return references.boot_moved

    # ---------------------------------------------------------------- one path

    def apply(self, txn: Transaction, path: str, references: References, report: ReconcileReport, *,
              on_disk: set[str], lstat: os.stat_result | None = None,
              markers: set[str] | None = None) -> None:
        """Apply the policy to one path.

        ``lstat`` and ``markers`` come from :meth:`walk`: the lstat of the walked file, and the
        markers the walk saw. Without them the path is resolved and its marker looked up.
        """
        report.examined += 1
        try:
            self._apply(txn, path, references, report, on_disk, lstat, markers)
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

    def _apply(self, txn: Transaction, path: str, references: References, report: ReconcileReport,
               on_disk: set[str], lstat: os.stat_result | None, markers: set[str] | None) -> None:
        index = txn.index
        count = references.get(path, 0)
        real: Path | None = None  # resolved only when the walk did not stat the file itself
        if lstat is None or stat.S_ISLNK(lstat.st_mode):
            real = self.cache.boot_file(path)
            try:
                boot_st: os.stat_result | None = os.stat(real)
            except FileNotFoundError:
                boot_st = None
        else:
            boot_st = lstat
        cached = path in index
        if boot_st is not None and not stat.S_ISREG(boot_st.st_mode):
            if cached or self.is_tracked(path, references):
                where = real if real is not None else self.cache.boot_file(path)
                self._report_not_regular(path, f"{where}: is a {file_kind(boot_st.st_mode)}, not a regular file; "
                                               "not caching it")
            return
        if boot_st is not None:
            self.reported_missing.discard(path)
            self.reported_not_regular.discard(path)
            ours = self._is_our_restored_copy(txn, path, boot_st, real, markers) if cached else None
            if ours is False:
                # Marked as restored, but not the file bootwatch wrote: someone put it back (a
                # package manager, by rename, maybe with the same content). It is theirs.
                txn.drop_stale_marker(path, self.cache.boot_name(path))
            elif ours and count == 0 and references.unknown is None:  # unknown: nothing is taken away
                # The entry that needed it is gone (a package manager removed both): take it away again.
                if txn.remove_restored_copy(path):
                    report.unrestored.append(path)
                    log.info("%s: removed the restored copy: no boot entry references it any more", path)
                return
            if not self.is_tracked(path, references):
                return
            newest = index.newest(path) if cached else None
            if newest is not None and newest in on_disk and index.known_content_of_stat(path, boot_st) == newest:
                return  # unchanged since it was hashed, and its image is there: nothing to read
            image_gone = newest is not None and newest not in on_disk
            if image_gone:
                report.broken.append(path)
                log_event(log, Event.IMAGE_BROKEN, "%s: cached image %s is gone from the cache", path, newest,
                          level=logging.WARNING, path=path, image_id=newest, state=PathState.BROKEN)
            report.hashed += 1
            result = txn.add(path)
            on_disk.add(result.image_id)
            if result.outcome is AddOutcome.CACHED:
                report.cached.append(path)
                log_event(log, Event.IMAGE_CACHED, "%s: cached as image %s", path, result.image_id,
                          path=path, image_id=result.image_id, state=PathState.CACHED)
            elif result.outcome is AddOutcome.CHANGED:
                report.changed.append(path)
                log_event(log, Event.IMAGE_CHANGED, "%s: content changed, new image %s (was %s)", path,
                          result.image_id, result.previous_id, path=path, image_id=result.image_id,
                          state=PathState.CACHED, previous_image_id=result.previous_id)
            elif image_gone:
                report.recopied.append(path)
                log.info("%s: copied image %s again from the boot file", path, result.image_id)
            return
        # The boot file is gone.
        if not cached:
            return
        # So is the file a restore wrote, if any (and the marker bootwatch made for it): a marker
        # beside a later file of that name would make it look restored.
        txn.forget_restored_copy(path)
        newest = index.newest(path)
        if count and self.config.cache.auto_restore and newest in on_disk:
            link = dangling_link(self.cache.boot_name(path))
            if link is not None:  # restoring would write what the link names: another path
                self._report_missing(path, count, newest, report,
                                     f"not restored: it is a symlink to {link}, which does not exist, and bootwatch "
                                     "never restores through a symlink")
                return
            image_id = txn.restore(path)
            report.restored.append(path)
            self.reported_missing.discard(path)
            log_event(log, Event.IMAGE_RESTORED, "%s: restored image %s (referenced by %d boot entries)", path,
                      image_id, count, path=path, image_id=image_id, state=PathState.RESTORED)
            return
        self._report_missing(path, count, newest, report)

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
            why = f"still referenced by {count} boot entries" if count else "no boot entry references it"
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
            if not markers or marker_path_of(path) not in markers:
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
        store = self.cache.store
        for image_id in sorted(set(image_ids)):
            if image_id not in txn.index.all_image_ids():
                continue
            paths = txn.index.paths_of(image_id)
            st = store.image_stat(image_id)
            problem = None
            if st is None:
                problem = "was deleted from the cache"
            else:
                size = txn.index.recorded_size(image_id)
                try:
                    digest = store.hash_image(image_id, cancel=self.cache.cancel)
                except OSError as e:
                    problem = f"cannot be read: {e.strerror}"
                except OpenForWritingError as e:
                    # Judged when the writer closes it (that close is an event of its own).
                    log.info("%s; checking it when it is closed", e)
                    continue
                except ContentChangedError:  # images are never written in place
                    problem = "is being modified in the cache"
                else:
                    if digest.sha1 != image_id or (size is not None and size != digest.size):
                        problem = f"was modified in the cache (its content hashes to {digest.sha1})"
            if problem is None:
                continue
            report.broken.extend(paths)
            log_event(log, Event.IMAGE_BROKEN, "image %s of %s %s", image_id, ", ".join(paths), problem,
                      level=logging.WARNING, path=paths[0], image_id=image_id, state=PathState.BROKEN)
            if st is not None:
                self._set_aside(image_id, report)
            for path in paths:
                if self._recopy(txn, path, image_id):
                    report.recopied.append(path)
                    log.info("%s: copied image %s again from the boot file", path, image_id)
                    break

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
        known = txn.index.known_content(path, StatSignature.of(st))
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
