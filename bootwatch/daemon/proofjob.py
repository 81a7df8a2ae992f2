"""The daemon's boot proof job (``[prove] on_new_kernel = true``): each new kernel's entries booted
in a throwaway VM, as ``bootwatch prove`` boots them.

**What is new.** The keys of the images a batch of the daemon cached or saw change (the first
reconcile's too: a kernel installed while the daemon was stopped) are *pending*
(:meth:`ProofJob.note_images`). A run of the job looks at the entries that name a pending key
as their kernel, initramfs or unified kernel image, and proves each whose files (their stat
signatures, :func:`~bootwatch.prove.proof.entry_files`) have no stored proof that passed or
failed: an entry already proved as it is now is not proved again, and a proof that was not run
(qemu missing, another architecture) is tried again when one of its files is new again. Pending
keys that no entry names once the transaction is over are dropped: there is nothing to prove.

**When.** Not while a package manager's transaction is in progress (the lock files of ``[watch]``,
looked at by a :class:`~bootwatch.pkgtxn.TransactionMonitor` of the job's own, since the worker's
is the worker's; at most ``[watch] transaction_timeout``)
and not before the daemon's changes have been quiet for ``[watch] settle``: dpkg writes the
kernel, then the initramfs, then grub.cfg, and a proof in between would boot half an install.
The job waits for that in its own thread, looking every :data:`WAIT_POLL` seconds; batches never
wait for a proof.

**One at a time.** The job runs on APScheduler like the others (``max_instances=1``,
``coalesce``): a batch that caches a new image asks for a run now (:meth:`ProofJob.note_images`
says whether one must be asked for; a run in progress takes the new keys itself before it
ends), and the job's interval (``[watch] rescan_interval``) is the safety net. The proofs of a
run are made one after the other.

**Stopping.** :meth:`ProofJob.cancel` (the daemon stops, or a reload turns the job off) ends a
wait at once and a running VM within :data:`~bootwatch.prove.vm.CANCEL_POLL` seconds: killed and
reaped, nothing stored for it.

**Results** go to the same :class:`~bootwatch.prove.proof.ProofStore` as ``bootwatch prove``'s;
a failed proof is logged as ``PROOF_FAILED``. Without qemu-system-x86_64 the proofs are "not
run", said once per daemon at NOTICE, never a failure.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Callable

from bootwatch.cache.operations import BootCache
from bootwatch.config import Config
from bootwatch.entries.inventory import Inventory
from bootwatch.entries.model import Entry, FileRole
from bootwatch.errors import printable
from bootwatch.log import NOTICE, Event, log_event
from bootwatch.pkgtxn import Transaction, TransactionMonitor
from bootwatch.prove.proof import NOT_INSTALLED, Proof, ProofStore, Verdict, entry_files, prove_entry
from bootwatch.prove.vm import ProofCancelled, qemu_path

WAIT_POLL = 0.5
"""Seconds between looks at the package manager's locks and the daemon's quiet while waiting."""

_PROVED_ROLES = (FileRole.KERNEL, FileRole.INITRD, FileRole.UKI)

Settings = Callable[[], Config]
Quiet = Callable[[], bool]


class ProofJob:
    """The proof job's state between runs: the pending keys, and the cancel event of its VMs.

    ``settings`` gives the configuration a run starts with (the scheduler's, swapped whole by a
    reload); ``quiet`` whether the daemon has no change in hand and none for ``[watch] settle``.
    """

    def __init__(self, cache: BootCache, store: ProofStore, *, settings: Settings, quiet: Quiet,
                 logger: logging.Logger | None = None) -> None:
        self.cache = cache
        self.store = store
        self.settings = settings
        self.quiet = quiet
        self._transactions = TransactionMonitor(settings().watch.locks())
        self.logger = logger or logging.getLogger("bootwatch.daemon.proofjob")
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._running = False
        self._said_not_installed = False

    # ---------------------------------------------------------------- the daemon's side

    def note_images(self, keys: Iterable[str]) -> bool:
        """Keys of images a batch cached or saw change; True when a run must be asked for (none is
        running, which would take them before it ends)."""
        keys = set(keys)
        with self._lock:
            self._pending |= keys
            return bool(self._pending) and not self._running

    @property
    def pending(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def cancel(self) -> None:
        """End a wait and kill a running VM; the job does nothing more."""
        self._cancel.set()

    def take_over(self, old: ProofJob) -> None:
        """Keep what ``old`` (a job a reload or a new cache replaced) had pending."""
        with old._lock:
            pending = set(old._pending)
        with self._lock:
            self._pending |= pending
            self._said_not_installed = old._said_not_installed

    # ---------------------------------------------------------------- the job

    def run(self) -> None:
        """One run: until nothing is pending (or the job is cancelled)."""
        with self._lock:
            if self._running:
                return
            self._running = True
        try:
            while not self._cancel.is_set():
                with self._lock:
                    if not self._pending:
                        self._running = False
                        return
                if not self._wait_until_settled():
                    return
                self._prove_pending()
        finally:
            with self._lock:
                self._running = False

    def _wait_until_settled(self) -> bool:
        """Until no package manager's transaction is in progress (at most ``[watch]
        transaction_timeout``) and the daemon is quiet. False: cancelled."""
        started = time.monotonic()
        waited_for: Transaction | None = None
        while not self._cancel.is_set():
            watch = self.settings().watch
            if watch.locks() != self._transactions.locks:  # a reload named other lock files
                self._transactions = TransactionMonitor(watch.locks())
            txn = self._transactions.current()
            timeout = watch.transaction_timeout
            if txn is not None and time.monotonic() - started < timeout:
                if txn != waited_for:
                    self.logger.info("boot proofs wait for %s to finish", txn.describe())
                    waited_for = txn
            elif self.quiet():
                if txn is not None:
                    self.logger.warning("boot proofs: waited %.0f s for %s, longer than [watch] transaction_timeout; "
                                        "proving now", time.monotonic() - started, txn.describe())
                return True
            self._cancel.wait(WAIT_POLL)
        return False

    def _prove_pending(self) -> None:
        config = self.settings()
        with self._lock:
            pending = set(self._pending)
        inventory = self.cache.read_inventory()
        todo = [e for e in inventory.entries if self._names(inventory, e, pending) and self._unproved(inventory, e)]
        with self._lock:
            # Looked at now: proved below, proved before, or named by no entry once all is quiet.
            self._pending -= pending
        if not todo:
            return
        qemu = qemu_path(os.environ.get("PATH"))
        if qemu is None and not self._said_not_installed:
            self._said_not_installed = True
            self.logger.log(NOTICE, "boot proofs of new kernels are not run: %s (package qemu-system-x86)",
                            NOT_INSTALLED)
        self.store.check()
        for entry in todo:
            if self._cancel.is_set():
                return
            try:
                proof, console = prove_entry(inventory, entry, qemu=qemu, accel=config.prove.accel,
                                             limits=config.prove.limits(), cancel=self._cancel)
            except ProofCancelled:
                self.logger.info("the boot proof of %s:%s was cancelled", entry.source.value, printable(entry.id))
                return
            self._report(entry, self.store.save(entry, proof, console))

    @staticmethod
    def _names(inventory: Inventory, entry: Entry, keys: set[str]) -> bool:
        return any(inventory.keys(f) & keys for f in entry.files if f.role in _PROVED_ROLES)

    def _unproved(self, inventory: Inventory, entry: Entry) -> bool:
        files = entry_files(inventory, entry)
        if files is None:
            return False  # a file is missing or on no partition bootwatch can tell: the health check says so
        stored = self.store.load(entry)
        return stored is None or stored.verdict is Verdict.NOT_RUN or not stored.is_of(files)

    def _report(self, entry: Entry, proof: Proof) -> None:
        name = printable(f"{entry.source.value}:{entry.id}")
        where = f" [{proof.accel}, {proof.seconds:.1f} s]" if proof.accel else ""
        if proof.verdict is Verdict.FAILED:
            log_event(self.logger, Event.PROOF_FAILED, "the boot proof of %s failed%s: %s (console log %s)", name,
                      where, proof.reason, proof.log or "none: no VM ran", level=logging.ERROR,
                      path=proof.log or self.store.result_path(entry), entry=name, reason=proof.reason)
        elif proof.verdict is Verdict.PASSED:
            self.logger.info("the boot proof of %s passed%s: %s", name, where, proof.reason)
        elif proof.reason != NOT_INSTALLED:
            self.logger.info("the boot proof of %s was not run: %s", name, proof.reason)
