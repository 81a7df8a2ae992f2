"""Opening the cache a configuration names, and one full reconcile of it.

What ``bootwatch scan`` (and the package hooks through it) shares with the daemon's
start-up, kept here so that neither a one-shot command nor a hook loads the service's stack.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from bootwatch import scanproof
from bootwatch.cache.hashing import Cancelled
from bootwatch.cache.operations import BootCache
from bootwatch.cache.reconcile import Reconciler, ReconcileReport
from bootwatch.cache.store import IMAGE_SUFFIX, INDEX_NAME, REFERENCES_NAME, SIGNATURES_NAME, TEMP_DIR, LockWaiter
from bootwatch.config import Config
from bootwatch.entries.inventory import GRUB_ENVS, Inventory
from bootwatch.entries.model import EntrySource
from bootwatch.errors import BootwatchError


def open_cache(config: Config) -> BootCache:
    """The cache of a configuration, with its directories checked (and the cache dir created)."""
    if not os.path.isdir(config.paths.boot):
        raise BootwatchError("boot directory does not exist", path=config.paths.boot,
                             hint="set [paths] boot in the configuration or pass --boot-dir")
    cache = BootCache.from_config(config)
    cache.store.check(create=True)
    return cache


def open_existing_cache(config: Config) -> BootCache:
    """The cache, for a command that only reads it: a cache directory that does not exist is no
    cache yet (:class:`~bootwatch.errors.CacheMissingError`), never an empty one, and is not created."""
    cache = BootCache.from_config(config)
    cache.store.check_existing()
    return cache


def reconcile_once(config: Config, cache: BootCache, reconciler: Reconciler | None = None, *,
                   waiter: LockWaiter | None = None) -> ReconcileReport:
    """One full reconcile in one transaction: ``bootwatch scan`` and the daemon's start-up pass.

    A pass that finds nothing changed is proved so without the lock where it can be (see
    :meth:`Reconciler.unchanged_pass`); anything else runs under the lock.
    """
    reconciler = reconciler or Reconciler(config, cache)
    quick = reconciler.unchanged_pass()
    if quick is not None:
        return quick
    with cache.transaction(waiter=waiter) as txn:
        return reconciler.full(txn)


def _ancestors(path: str) -> Iterator[str]:
    """``path`` and every directory above it."""
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _rooted(path: Path | str) -> list[tuple[str, str]]:
    """The records of a root a pass starts from: its name and its resolved name, every directory
    above both by identity (a symlink or a directory swapped on the way changes one), and, if it
    is absent, the deepest directory above it that exists (whose listing would gain it)."""
    records = []
    for name in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
        records.append((scanproof.STAT, name))
        found = os.path.lexists(name)
        for parent in list(_ancestors(name))[1:]:
            if not found and os.path.lexists(parent):
                records.append((scanproof.STAT, parent))
                found = True
            else:
                records.append((scanproof.IDENTITY, parent))
    return records


def scan_proof_records(config: Config, cache: BootCache, reconciler: Reconciler,
                       main_config: Path) -> list[tuple[str, str]] | None:
    """Every input of the complete pass ``reconciler`` just made (see :mod:`bootwatch.scanproof`),
    as (tag, path) records; None if it made none."""
    inputs = reconciler.last_inputs
    if inputs is None:
        return None
    stat, listing, mount = scanproof.STAT, scanproof.LISTING, scanproof.MOUNT
    main = os.path.abspath(main_config)
    dropins = main + ".d"
    records = _rooted(main) + _rooted(dropins)
    if os.path.isdir(dropins):
        records += [(stat, os.path.join(dropins, name)) for name in sorted(os.listdir(dropins))]
    records += [(stat, os.path.abspath(p)) for p in config.sources]
    records += _rooted(config.paths.boot)
    records += [(stat, p) for p in inputs.directories]
    boot = str(reconciler.boot_real).rstrip("/")
    for path in inputs.paths:
        # Each directory on the way from the boot directory (a marker or restore temp file
        # beside the file changes its directory), and the file, through its symlinks.
        records += [(stat, p) for p in reversed(list(_ancestors(boot + path))) if len(p) > len(boot)]
        with contextlib.suppress(OSError, BootwatchError):
            records.append((stat, str(cache.boot_file(path))))
    # Where the full pass looks for a killed restore's temp files (BootCache._restore_directories):
    # the directories of every cached path's file and name, symlinked targets' included.
    for path in sorted(set(cache.load_index().paths()) | set(inputs.paths)):
        for resolve in (cache.boot_file, cache.boot_name):
            with contextlib.suppress(OSError, BootwatchError):
                records.append((stat, str(resolve(path).parent)))
    if inputs.inventory is None:
        return None
    records += _entry_records(inputs.inventory)
    directory = os.path.realpath(cache.store.directory)
    # The cache directory (and its .tmp/) change when the proof is written: compared by listing.
    records += [(scanproof.IDENTITY if p in (directory, os.path.abspath(cache.store.directory)) else tag, p)
                for tag, p in _rooted(cache.store.directory)]
    records += [(listing, directory), (listing, os.path.join(directory, TEMP_DIR))]
    names = sorted(os.listdir(directory))
    records += [(stat, os.path.join(directory, name)) for name in (INDEX_NAME, SIGNATURES_NAME, REFERENCES_NAME)]
    records += [(stat, os.path.join(directory, name)) for name in names if name.endswith(IMAGE_SUFFIX)]
    records += [(mount, str(reconciler.boot_real)), (mount, directory)]
    records += [(mount, os.path.realpath(r.location)) for r in inputs.inventory.found]
    return records


def _entry_records(inventory: Inventory) -> list[tuple[str, str]]:
    """What the entries were read from: every location each source looked at (there or not), the
    files in a directory of entries (``*.conf``, ``*.efi``), a ``grub.cfg``'s directory and the
    files in it (``grubenv``, the files it includes) and every file an entry came from."""
    stat = scanproof.STAT
    records: list[tuple[str, str]] = []
    directories = []
    for result in inventory.results:
        records += _rooted(result.location)
        directories.append(result.location.parent if result.source is EntrySource.GRUB else result.location)
    for grubenv in GRUB_ENVS:
        records += _rooted(inventory.roots.boot / grubenv)
    for directory in dict.fromkeys(os.path.realpath(d) for d in directories):
        if os.path.isdir(directory):
            records.append((stat, directory))
            records += [(stat, os.path.join(directory, name)) for name in sorted(os.listdir(directory))]
    records += [(stat, str(origin)) for origin in dict.fromkeys(e.origin for e in inventory.entries)]
    return records


class _NoWait(LockWaiter):
    """Gives the wait for the writers' lock up at once when another process holds it."""

    def __init__(self) -> None:
        super().__init__(threading.Event())

    def waiting(self, lock_fd: int) -> None:
        assert self.cancel is not None
        self.cancel.set()


def record_scan_proof(config: Config, cache: BootCache, reconciler: Reconciler, *, key: str,
                      main_config: Path, started: scanproof.Start) -> bool:
    """Record the proof that the pass of ``reconciler`` found nothing to do (see
    :mod:`bootwatch.scanproof`) if every input it read is older than the racy margin before
    ``started`` (when this process began to read its inputs), the mounts are those of that moment
    and every root still resolves to the directory or file the pass read. Returns whether it did.

    The caller checked that the pass reported and logged nothing. Written as the other derived
    files are, by a holder of the writers' lock; when another process holds it (it may be
    changing the inputs) no proof is written, rather than waiting: a proof only saves time.
    """
    # What the pass read through each root (a symlink on the way retargeted since is in no record).
    def same_roots() -> bool:
        return (os.path.realpath(reconciler.boot_dir) == str(reconciler.boot_real)
                and all(os.path.realpath(p) in reconciler.skip_dirs for p in (config.paths.entries, config.paths.cache))
                and os.path.realpath(main_config) == started.main_config_real)

    try:
        with cache.store.locked(create=False, remove_stale=False, waiter=_NoWait()):
            records = scan_proof_records(config, cache, reconciler, main_config)
            proof = None if records is None else scanproof.encode(key, records, started.ns)
            if (proof is None or started.mountinfo is None or scanproof.mountinfo() != started.mountinfo
                    or not same_roots()):
                return False
            cache.store.write_derived(scanproof.PROOF_NAME, proof)
            return True
    except (OSError, BootwatchError, Cancelled):
        return False
