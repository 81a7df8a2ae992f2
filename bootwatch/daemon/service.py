"""``bootwatch run``: the always-on service.

Threads and who does what. Only the **worker** changes the daemon's state (its configuration,
cache, reconciler, watches, scheduler, metrics, status and daemon lock); every other thread sends
it a :data:`Message` on one queue and reads at most what the worker publishes for it:

- the **main thread** handles signals and talks to systemd: it turns SIGHUP into
  :attr:`Request.RELOAD` (after ``RELOADING=1``) and SIGTERM/SIGINT into a stop, sends
  :attr:`Request.TICK` at every wake-up (the worker then checks the watches and the cache
  directory), and sends ``WATCHDOG=1`` only while the worker and the inotify observer are alive
  and not stuck;
- the **observer** (watchdog's inotify threads) only queues :class:`~bootwatch.daemon.watcher.Change`
  records;
- the **worker** thread does the first reconcile, starts the scheduler, then takes messages off
  the queue, waits until changes have been quiet for the ``settle`` window, and applies the whole
  burst in one cache transaction: at most one index write per batch. A batch that decides about
  removed files first waits for the end of a package manager's transaction (see
  :meth:`Daemon._await_transaction`). Reconciles (SIGHUP, overflow, rescan job, re-armed
  watches) and reloads are messages too;
- the **scheduler** (APScheduler) runs the maintenance jobs in threads of their own; they take
  the cache lock like any other writer, and report their runs (:class:`JobDone`,
  :class:`Verified`) and rescan requests as messages. With ``[prove] on_new_kernel``, the boot
  proof job (:mod:`bootwatch.daemon.proofjob`) is one of them: a batch that cached or changed
  an image hands it the keys and asks for a run; it never holds up a batch.

Start-up order: watches are armed *before* the first reconcile, so that nothing changed during
the reconcile goes unseen, and ``READY=1`` is sent only after both. Every resource is entered
on an :class:`contextlib.ExitStack` when it starts, so it is stopped exactly once, in reverse
order, however the daemon ends: the worker's stack holds the scheduler, the main thread's holds
(last to first) ``STOPPING=1``, the worker, the watches, the status file and the daemon lock.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import gc
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Union

from bootwatch import linux
from bootwatch.cache.hashing import Cancelled
from bootwatch.cache.operations import BootCache, ImageVerification
from bootwatch.cache.pins import count_pins
from bootwatch.cache.proc import LockHolder, flock_holders
from bootwatch.cache.reconcile import Reconciler, ReconcileReport
from bootwatch.cache.session import open_cache, reconcile_once
from bootwatch.cache.store import INDEX_NAME, LOCK_NAME, TEMP_PREFIX, LockWaiter
from bootwatch.cache.writecheck import BrokenImage
from bootwatch.config import Config, load_config
from bootwatch.daemon.health import HealthWatch
from bootwatch.daemon.jobs import MaintenanceScheduler
from bootwatch.daemon.metrics import CacheListing, Metrics, proof_samples
from bootwatch.daemon.notify import SystemdNotifier
from bootwatch.daemon.proofjob import ProofJob
from bootwatch.daemon.status import DaemonStatus, load_status, status_path, write_status
from bootwatch.daemon.watcher import Change, ChangeKind, EntryLocations, Watcher
from bootwatch.entries.inventory import Inventory
from bootwatch.entries.summary import NO_ENTRIES_HINT, Census
from bootwatch.errors import BootwatchError, StorageError, describe_oserror, printable
from bootwatch.health.summary import count_states
from bootwatch.log import NOTICE, Event, IoErrorLog, counted, log_event, setup_logging
from bootwatch.pkgtxn import Transaction, TransactionMonitor
from bootwatch.prove.proof import ProofStore
from bootwatch.verify.mount import sweep_stale_mounts

log = logging.getLogger("bootwatch.daemon.service")

# A batch keeps growing while events keep coming, but not for longer than this many settle windows
# (and at least MIN_BATCH_WINDOW seconds): an endless trickle of events must not starve the work.
MAX_BATCH_SETTLES = 20
MIN_BATCH_WINDOW = 2.0
# The quiet window of a batch that holds only a few completed boot files (see Daemon._collect).
# More files than that is a storm, which is coalesced over the full settle window like the rest:
# each batch costs a read and a write of the whole index.
COMPLETION_WINDOW = 0.02
COMPLETION_BATCH_LIMIT = 8
# A batch naming more boot paths than this is applied as a full reconcile.
STORM_PATHS = 256
# While more changes wait, the counts by state (a stat of every cached path) are refreshed at most
# this often.
COUNTS_REFRESH = 10.0
# Without systemd's watchdog the main loop still wakes this often to check the watches.
IDLE_TICK = 5.0
# A wait for the writers' lock held by another process (or by a job of this one) counts as
# progress for the watchdog only for so long: after LOCK_REPORT_AFTER seconds (at most two
# watchdog intervals) STATUS and the journal name the holder, and once the wait is longer than
# the stuck bound of Daemon._stuck_after (four intervals, at least 10 s: 60 s under the shipped
# WatchdogSec=30s) the watchdog ping is withheld and systemd restarts the daemon. A restart does
# not release the lock, but it makes the stall visible as a failed unit (OnFailure=, monitoring),
# and the restarted daemon goes on waiting before READY=1 and resumes once the holder lets go.
# Except when the holder is this daemon's own maintenance job (a long clean or gc of a huge
# cache): that is the daemon's own work, not a stall caused by someone else, and a restart would
# only kill the job and have it start again from nothing at its next run. The wait is still
# reported (STATUS and LOCK_WAIT name "this daemon's own maintenance job"); the holder is
# looked up again every OWN_HOLDER_RECHECK seconds, so another process that takes the lock
# after the job counts as usual.
LOCK_REPORT_AFTER = 10.0
OWN_HOLDER_RECHECK = 5.0
# While the worker waits for the lock, whether the cache directory was replaced is checked this often.
REPLACED_RECHECK = 1.0
# While a batch waits for a package manager's transaction to end, its lock files are looked at this
# often: an fcntl lock released or a PID file's process ending makes no inotify event.
TRANSACTION_POLL = 0.5
# Paths whose caching failed (a file still being written) are tried again after this delay.
RETRY_DELAY = 1.0
MAX_RETRIES = 5
# How long a stop waits for the maintenance jobs, and then for the worker (which stops the jobs).
JOBS_STOP_TIMEOUT = 5.0
WORKER_STOP_TIMEOUT = 15.0


class Request(enum.Enum):
    """What another thread asks of the worker, besides file system changes."""

    RESCAN = "rescan"  # reconcile everything: the rescan job, a retry after an error, after a reload
    RELOAD = "reload"  # SIGHUP: read the configuration again
    TICK = "tick"  # the main loop woke up: check the watches and the cache directory
    STOP = "stop"  # finish the batch in hand, stop the jobs, end


@dataclass(frozen=True)
class JobDone:
    """A maintenance job ended (``MaintenanceScheduler``'s ``on_job_done``)."""

    name: str
    duration: float
    ok: bool


@dataclass(frozen=True)
class Verified:
    """A verify slice ended with these results (``MaintenanceScheduler``'s ``on_verified``)."""

    results: tuple[ImageVerification, ...]


Message = Union[Change, Request, JobDone, Verified]


def is_work(message: Message) -> bool:
    """Whether a message asks the worker for a batch (a change, a rescan, a reload), as opposed to
    a report or a tick it handles in passing."""
    return isinstance(message, Change) or message is Request.RESCAN or message is Request.RELOAD


class MessageQueue(queue.Queue[Message]):
    """The worker's queue, counting the messages in it that ask for work (:func:`is_work`).

    ``_put`` and ``_get`` run under the queue's own mutex, so the count is always the queue's.
    The worker reads it after a batch: idle means no work waits, whatever ticks or job reports do.
    """

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self.work_pending = 0

    def _put(self, item: Message) -> None:
        super()._put(item)
        if is_work(item):
            self.work_pending += 1

    def _get(self) -> Message:
        item = super()._get()
        if is_work(item):
            self.work_pending -= 1
        return item


@dataclass
class Batch:
    """What a burst of changes asks the worker to do."""

    full: bool = False
    overflow: bool = False
    reload: bool = False
    entries_changed: bool = False
    foreign_index: bool = False
    boot_paths: set[str] = field(default_factory=set)
    image_ids: set[str] = field(default_factory=set)
    changes: int = 0
    slow: bool = False  # something that must wait for the full settle window
    unclosed: set[str] = field(default_factory=set)  # boot files created and not yet closed
    removed: set[str] = field(default_factory=set)  # boot files deleted or renamed away (and not back)

    def has_work(self) -> bool:
        return bool(self.full or self.reload or self.entries_changed or self.foreign_index or self.boot_paths
                    or self.image_ids)

    def decides_removals(self) -> bool:
        """Whether applying the batch may restore a removed boot file or forget one: a file deleted
        or renamed away, the entries changed, or a full reconcile. Such a batch waits for the end
        of a package manager's transaction (:meth:`Daemon._await_transaction`)."""
        return bool(self.full or self.foreign_index or self.entries_changed or self.removed)

    def decisions(self) -> str:
        """What the batch will decide about, for STATUS= and the journal: "2 removed files"."""
        parts = []
        if self.removed:
            parts.append(f"{len(self.removed)} removed file{'s' if len(self.removed) != 1 else ''}")
        if self.entries_changed:
            parts.append("changed boot entries")
        if self.full or self.foreign_index:
            parts.append("a full reconcile")
        return " and ".join(parts) or "removed files"


def release_memory() -> None:
    """Give the memory of a big batch back to the system once the daemon goes idle.

    A storm of 10,000 files leaves parsed indexes and listings freed but held by the C
    allocator; ``malloc_trim(0)`` returns the free heap pages, so the idle RSS stays small.
    Called once the batch's own objects are gone (:meth:`Daemon._worker_loop`): trimmed
    while its transaction's index and the listing were still referenced, their pages were
    freed only after the trim and stayed with the allocator.
    """
    # The interpreter's attribute lookup cache keeps the last name looked up in each of its
    # slots, strings built during the batch (watchdog's f"on_{event_type}") that would pin
    # otherwise empty pools of the small-object allocator.
    sys._clear_type_cache()
    gc.collect()
    linux.malloc_trim()


def load_daemon_config(config_file: Path | None, boot: Path | None, cache: Path | None) -> Config:
    return load_config(config_file).with_overrides(boot=boot, cache=cache)


class LockWaitReporter(LockWaiter):
    """The daemon's side of a wait for the writers' lock: names the holder after a bound,
    says when the wait ends, and tells :meth:`Daemon._healthy` how long it has lasted.

    Called on the worker (the only thread whose waits it reports); the main thread only reads
    :meth:`waited`, :attr:`own` and :attr:`holders`.
    """

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(cancel=daemon.stop_requested)  # a stop ends the wait (Cancelled)
        self.daemon = daemon
        self.since: float | None = None  # time.monotonic() of the first attempt that found it held
        self.since_wall = 0.0
        self.holders = ""  # set once the wait was reported
        self.own = False  # the holder is this daemon's own maintenance job (see _healthy)
        self.own_checked = 0.0
        self.replaced_checked = 0.0

    def waited(self) -> float | None:
        since = self.since
        return None if since is None else time.monotonic() - since

    def waiting(self, lock_fd: int) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since, self.since_wall = now, time.time()
        self.daemon.beat()  # the worker is alive; _healthy decides how long a wait may last
        if now - self.replaced_checked >= REPLACED_RECHECK:
            self.replaced_checked = now
            self.daemon.check_cache_replaced()  # then stop_requested is set: give_up() ends the wait
        if self.holders and now - self.own_checked >= OWN_HOLDER_RECHECK:
            # The job may have let go and another process taken the lock meanwhile.
            self.own_checked = now
            self.own = self._held_by_own_job(flock_holders(lock_fd))
        if not self.holders and now - self.since >= self.daemon.lock_report_after():
            self._report(lock_fd, now - self.since)

    def _report(self, lock_fd: int, waited: float) -> None:
        """Name the holder: in the journal, STATUS and the status file."""
        holders = flock_holders(lock_fd)
        self.own, self.own_checked = self._held_by_own_job(holders), time.monotonic()
        own = [h for h in holders if h.pid == os.getpid()]
        self.holders = ", ".join(("this daemon's own maintenance job" if h in own else h.describe())
                                 for h in holders) or "a process that /proc/locks does not show"
        lock_path = self.daemon.cache.store.directory / LOCK_NAME
        first = holders[0] if holders else None
        log_event(log, Event.LOCK_WAIT, "waiting %.0f s for the cache lock %s, held by %s; changes wait "
                  "until it is released", waited, lock_path, self.holders, level=logging.WARNING,
                  path=lock_path, waited=f"{waited:.0f}", holder_pid=first.pid if first else None,
                  holder_command=first.command if first else None)
        since = time.strftime("%H:%M:%S", time.localtime(self.since_wall))
        self.daemon.status.lock_wait = f"waiting since {since} for the cache lock held by {self.holders}"
        self.daemon.publish_status()

    @staticmethod
    def _held_by_own_job(holders: Sequence[LockHolder]) -> bool:
        """Only this process holds it: the worker is the one waiting, so it is a job thread."""
        return bool(holders) and all(h.pid == os.getpid() for h in holders)

    def acquired(self) -> None:
        waited = self.waited()
        if self.holders and waited is not None:
            log.log(NOTICE, "got the cache lock after waiting %.0f s (it was held by %s)", waited, self.holders)
            self.daemon.status.lock_wait = None
            self.daemon.publish_status()
        self.since, self.holders, self.own = None, "", False


class Daemon:
    def __init__(self, config_file: Path | None = None, boot: Path | None = None,
                 cache: Path | None = None) -> None:
        self.sources = (config_file, boot, cache)
        self.config = load_daemon_config(*self.sources)  # ConfigError: exit 78 before anything starts
        self.notifier = SystemdNotifier()
        # The one way into the worker (see the module docstring).
        self.messages = MessageQueue()
        self.stop_requested = threading.Event()
        self.wakeup = threading.Event()  # the main loop's: a signal arrived
        self.reload_requested = False  # the main thread's: set by SIGHUP's handler, taken by the main loop
        self.tick_queued = threading.Event()  # a TICK waits in the queue: the main loop sends no other
        self.ready = threading.Event()  # the worker sent READY=1 (the first reconcile is done)
        self.worker: threading.Thread | None = None
        # Written by the worker, read by the main thread's watchdog check.
        self.busy_since: float | None = None
        self.last_progress = time.monotonic()
        self.ping_withheld = False  # the main thread's: the lock-wait warning was logged
        self.retries: dict[str, int] = {}
        self.counts_time = 0.0
        self.scheduler: MaintenanceScheduler | None = None
        self.daemon_lock: int | None = None  # the descriptor that holds the daemon lock
        self.lock_wait = LockWaitReporter(self)
        # What shows a package manager's transaction (see _await_transaction); a reload replaces it.
        self.transactions = TransactionMonitor(self.config.watch.locks())
        self.exit_code = 0  # 1 once the daemon stops because it cannot go on (see check_cache_replaced)
        self.io_errors = IoErrorLog(log)
        self.metrics: Metrics | None = (Metrics(self.config.metrics.textfile)
                                        if self.config.metrics.textfile else None)
        paths = self.config.paths
        self.status = DaemonStatus(pid=os.getpid(), started=time.time(), boot_dir=str(paths.boot),
                                   cache_dir=str(paths.cache))
        self.census: Census | None = None  # the boot entries as the last pass read them (the worker's)
        # The worker's; its memo lives as long as the daemon. An image's check stays well inside the stuck bound.
        self.health = HealthWatch(self.config.paths.runtime, image_timeout=self._stuck_after() / 2,
                                  cancel=self.stop_requested)
        self.health_time = 0.0
        # The boot entries a batch read while more work waited: judged once the worker is idle.
        self.health_due: Inventory | None = None
        self.counts_due = False  # a busy batch left the counts of cached paths for the idle worker
        # The boot entries as the last pass read them, entry by entry (the worker's: the proof metrics).
        self.inventory: Inventory | None = None
        self.last_change = 0.0  # time.monotonic() of the last change the worker took in (read by the proof job)
        # The boot proof job, while [prove] on_new_kernel is on (the worker's; see _configure_proofs).
        self.proof_job: ProofJob | None = None
        # New images written broken that are still their paths' newest (the worker's), by path.
        self.written_broken: dict[str, BrokenImage] = {}
        # Armed by run(); the object stays, a reload retargets it (the main thread asks it alive()).
        self.watcher = Watcher(paths.boot, paths.entries, paths.cache, self.messages, self._entry_locations)
        # The entry sources' directories as _classify compares names with them (as given and
        # resolved: ostree's /boot/loader is a symlink); worked out again for every batch.
        self._entry_prefixes: tuple[str, ...] | None = None
        # Set by run() before any thread that uses them starts.
        self.cache: BootCache
        self.reconciler: Reconciler

    # ---------------------------------------------------------------- life cycle (main thread)

    def run(self) -> int:
        setup_logging(self.config.log.level)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        with contextlib.ExitStack() as stack:
            self.cache = open_cache(self.config)
            self.cache.cancel = self.stop_requested  # a stop cancels the copy in progress (and removes its temp file)
            # Before anything that touches shared state (the runtime directory's mounts, the status
            # file): a second daemon on this cache stops here, with one line naming the first.
            self.daemon_lock = self.cache.store.hold_daemon_lock()
            stack.callback(self._release_daemon_lock)  # last: until the status file is gone, this daemon is the one
            # Verification mounts of a daemon that was killed (the loop devices autoclear with them).
            for stale in sweep_stale_mounts(Path(self.config.paths.runtime)):
                log.info("removed the stale verification mount point %s", stale)
            self.reconciler = self._new_reconciler(self.config)
            self._configure_proofs(new_cache=False)
            stack.callback(self._remove_own_status_file)
            self.watcher.start()
            stack.callback(self.watcher.stop)
            self.worker = threading.Thread(target=self._worker_main, name="bootwatch-worker", daemon=True)
            self.worker.start()
            stack.callback(self._stop_worker)
            stack.callback(self._announce_stopping)
            self._main_loop()
        return self.exit_code

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested.set()
        self.wakeup.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True
        self.wakeup.set()

    def _main_loop(self) -> None:
        interval = self.notifier.watchdog_interval()
        tick = min(interval, IDLE_TICK) if interval else IDLE_TICK
        while not self.stop_requested.is_set():
            self.wakeup.wait(tick)
            self.wakeup.clear()
            if self.stop_requested.is_set():
                break
            if not self.ready.is_set():
                continue  # the worker's first reconcile: no reload before it, no watchdog yet
            if self.reload_requested:
                self.reload_requested = False
                # RELOADING=1 now; the worker applies the new configuration between batches and
                # sends READY=1 when it is in force.
                self.notifier.reloading(status="reloading configuration")
                self.messages.put(Request.RELOAD)
            if not self.tick_queued.is_set():
                self.tick_queued.set()
                self.messages.put(Request.TICK)
            if self._healthy():
                self.notifier.watchdog()

    def _stuck_after(self) -> float:
        """Seconds without progress after which the worker counts as stuck."""
        return max(10.0, 4 * (self.notifier.watchdog_interval() or IDLE_TICK))

    def lock_report_after(self) -> float:
        """Seconds of waiting for the cache lock after which its holder is reported."""
        return min(LOCK_REPORT_AFTER, 2 * (self.notifier.watchdog_interval() or IDLE_TICK))

    def _healthy(self) -> bool:
        """The watchdog's question: are the worker and the observer alive and making progress?"""
        if self.worker is None or not self.worker.is_alive() or not self.watcher.alive():
            return False
        waited = self.lock_wait.waited()
        if waited is not None and waited > self._stuck_after() and not self.lock_wait.own:
            if not self.ping_withheld:
                self.ping_withheld = True
                log.warning("waited %.0f s for the cache lock held by %s: that is no longer progress; "
                            "withholding the watchdog ping", waited, self.lock_wait.holders or "another process")
            return False
        self.ping_withheld = self.ping_withheld and waited is not None
        busy_since = self.busy_since
        if busy_since is not None:
            idle = time.monotonic() - self.last_progress
            if idle > self._stuck_after():
                log.warning("the worker made no progress for %.0f s; withholding the watchdog ping", idle)
                return False
        return True

    def _announce_stopping(self) -> None:
        self.stop_requested.set()
        self.notifier.stopping(status="stopping")
        log_event(log, Event.DAEMON_STOPPING, "stopping")

    def _stop_worker(self) -> None:
        """The worker finishes its batch (a stop cancels a copy or a lock wait), stops the jobs, ends."""
        assert self.worker is not None
        self.stop_requested.set()
        self.messages.put(Request.STOP)
        self.worker.join(timeout=WORKER_STOP_TIMEOUT)

    def _release_daemon_lock(self) -> None:
        if self.daemon_lock is not None:
            os.close(self.daemon_lock)
            self.daemon_lock = None

    def _remove_own_status_file(self) -> None:
        """The status file, unless another daemon (on a replaced cache directory) wrote it since."""
        try:
            written = load_status(self.config.paths.runtime)
        except BootwatchError:
            return  # none, or not one a daemon wrote: not ours
        if written.pid != os.getpid():
            return
        with contextlib.suppress(OSError):
            os.unlink(status_path(self.config.paths.runtime))

    # ---------------------------------------------------------------- the worker

    def beat(self) -> None:
        self.last_progress = time.monotonic()

    def _worker_main(self) -> None:
        try:
            self._serve()
        except Exception:  # a bug: the daemon cannot go on without its worker; systemd restarts it
            log.exception("the worker failed; stopping")
            self.exit_code = 1
            self.stop_requested.set()
            self.wakeup.set()

    def _serve(self) -> None:
        with contextlib.ExitStack() as stack:
            report = self._first_reconcile()
            if report is None:
                return
            inputs = self.reconciler.last_inputs  # what a complete pass read (None: it was cut short)
            self._after_batch(report, full=True, inventory=inputs.inventory if inputs is not None else None)
            stack.callback(self._stop_scheduler)
            stack.callback(self._cancel_proofs)  # first: the scheduler's stop waits for the job
            self._start_scheduler()
            self._ask_for_proofs()  # of what the first reconcile cached
            self.status.state = "running"
            self._write_status()
            log_event(log, Event.DAEMON_STARTED, "watching %s (%s; cache %s): %s examined, %d hashed",
                      self.config.paths.boot, self.status.entries_text or "boot entries not read",
                      self.config.paths.cache, counted(report.examined, "path"), report.hashed)
            self.notifier.ready(status=self.status.summary())
            self.ready.set()
            self.wakeup.set()  # the main loop starts its watchdog now
            self._worker_loop()
            self.status.state = "stopping"

    def _first_reconcile(self) -> ReconcileReport | None:
        """The start-up reconcile; None if a stop ended it.

        Started during a package manager's transaction (a maintainer script restarting the daemon,
        or a boot that caught one), it restores nothing: the pass cannot wait, since systemd waits
        for READY=1 and the restart may come from inside that very transaction. If it found boot
        files missing, a full reconcile is queued instead, and like every batch that decides about
        removed files it waits for the transaction to end (:meth:`_await_transaction`).
        """
        reconciler = self.reconciler
        txn = self.transactions.current()
        if txn is not None:
            log.info("%s: a package manager transaction is in progress; the start-up pass restores nothing, "
                     "and removed files are decided once it has ended", txn.describe())
            reconciler = self._new_reconciler(self.config.without_restores())
        try:
            report = reconcile_once(self.config, self.cache, reconciler, waiter=self.lock_wait)
            if reconciler is not self.reconciler and report.missing:
                self.messages.put(Request.RESCAN)
            return report
        except Cancelled:
            log.info("stopped during the first reconcile; the next start does it again")
            return None
        except StorageError as e:
            self.io_errors.report(e.filename, e.errno, f"first reconcile failed: {e}", hint=e.hint)
            return ReconcileReport(errors=[str(e)])
        except BootwatchError as e:
            # A corrupt index must not keep the service down: report it, keep watching, and
            # retry with every batch; 'bootwatch fsck --repair' is the way out.
            log.error("first reconcile failed: %s%s", e, f" (hint: {e.hint})" if e.hint else "")
            return ReconcileReport(errors=[str(e)])
        finally:
            self.reconciler.reported_missing = reconciler.reported_missing

    def _worker_loop(self) -> None:
        worked = True  # the first reconcile's memory is released too
        while True:
            if worked and not self.messages.work_pending:
                # What a complete pass looked at is for scan's proof; the daemon read what it needs
                # of the first (_serve), and the list of every path would stay behind, scattered
                # over the memory the batch used.
                self.reconciler.last_inputs = None
                release_memory()  # here, once a batch's index, listing and report are freed
                worked = False
            batch = self._collect()
            if batch is None:
                return
            if not batch.has_work():
                # The health pass and counts left for now parse and read as a batch does.
                worked = worked or self.health_due is not None or self.counts_due
                self._check_health_due()
                continue
            worked = True
            self.busy_since = self.last_progress = time.monotonic()
            try:
                self._apply_logged(batch)
            except Cancelled:  # stopping: the index is left as it was; the next start redoes the batch
                log.info("stopped in the middle of a batch of %s", counted(batch.changes, "change"))
                return
            finally:
                self.busy_since = None

    def _apply_logged(self, batch: Batch) -> None:
        """Apply a batch; its errors are reported here, and retried where a retry can help."""
        started = time.monotonic()
        try:
            self._apply(batch)
            log.debug("applied a batch of %d changes (%d boot paths, %d images%s) in %.3f s", batch.changes,
                      len(batch.boot_paths), len(batch.image_ids), ", full reconcile" if batch.full else "",
                      time.monotonic() - started)
        except StorageError as e:
            # A full, read-only or failing cache file system: one line per file and errno
            # (not one per batch); the next batch or the rescan tries again.
            self.io_errors.report(e.filename, e.errno, str(e), hint=e.hint)
            self._note_cache_state()
            self.publish_status()
        except BootwatchError as e:
            log.error("%s%s", e, f" (hint: {e.hint})" if e.hint else "")
        except OSError as e:
            self.io_errors.report(e.filename or str(self.config.paths.cache), e.errno or 0,
                                  f"applying a batch of {batch.changes} changes failed: {describe_oserror(e)}")
            self._retry_later(Request.RESCAN, key="rescan")
        except Cancelled:
            raise
        except Exception:
            log.exception("unexpected error while applying a batch of %s; a full reconcile follows",
                          counted(batch.changes, "change"))
            self._retry_later(Request.RESCAN, key="rescan")

    def _collect(self) -> Batch | None:
        """The next batch (:meth:`_collect_burst`), once no package manager's transaction is in
        progress if it decides about removed files (:meth:`_await_transaction`). None: stop."""
        batch = self._collect_burst()
        if batch is None or not batch.decides_removals():
            return batch
        return self._await_transaction(batch)

    def _collect_burst(self) -> Batch | None:
        """Block for the first change, then gather until the batch's quiet window passes without one.

        The window is ``settle`` for anything that may lead to a restore or needs the references
        re-read (deletions, renames away, entry changes, reconciles, the cache directory) and for
        a file created but not yet closed. A batch of nothing but completed boot files
        (closed after writing, or renamed into place) only waits :data:`COMPLETION_WINDOW`: it can
        only lead to caching, which is never wrong to do early, and the image is cached as soon as
        it is complete. A storm of completions is coalesced over ``settle`` again.

        Messages that are not changes (a tick, a job's report) are handled as they come and do
        not extend the window. None: stop.
        """
        batch = Batch()
        settle = self.config.watch.settle
        deadline: float | None = None  # set by the first change
        quiet_until = 0.0
        while True:
            now = time.monotonic()
            if deadline is None:
                timeout = None  # nothing gathered yet: wait for as long as it takes
            elif now >= deadline or now >= quiet_until:
                return batch
            else:
                timeout = min(deadline, quiet_until) - now
            try:
                message = self.messages.get(timeout=timeout)
            except queue.Empty:
                return batch
            if message is Request.STOP:
                if deadline is None:
                    return None
                self.messages.put(message)  # finish this batch, then stop
                return batch
            if not self._gather(batch, message):
                continue
            if deadline is None:
                deadline = now + max(MIN_BATCH_WINDOW, MAX_BATCH_SETTLES * settle)
            quick = not (batch.slow or batch.unclosed) and len(batch.boot_paths) <= COMPLETION_BATCH_LIMIT
            quiet_until = time.monotonic() + (min(settle, COMPLETION_WINDOW) if quick else settle)

    def _await_transaction(self, batch: Batch) -> Batch | None:
        """Hold a batch that decides about removed files while a package manager's transaction is
        in progress (:class:`~bootwatch.pkgtxn.TransactionMonitor`); then return it, and applying
        it reads the entries as they are then. None: stop.

        dpkg removes a kernel and only then runs the hook that rewrites grub.cfg without its entry;
        deciding in between would restore a kernel that its own entry is about to drop. While the
        batch waits, the lock files are looked at every :data:`TRANSACTION_POLL` seconds, changes
        keep joining the batch (caching new files waits with it), ticks, job reports and reloads
        are handled as they come, and a stop ends the wait at once: the batch is dropped, and the
        first reconcile of the next start covers it. The wait has a bound, ``[watch]
        transaction_timeout``, so that a stuck process or a stale lock file (pacman's, after a
        crash) cannot hold restores back for ever: then TRANSACTION_TIMEOUT names the lock and its
        holder, the batch is applied, and that transaction is not waited for again while it lasts.
        """
        txn = self.transactions.current()
        if txn is None:
            return batch
        started = checked = time.monotonic()
        since = time.strftime("%H:%M:%S")
        log.info("waiting for %s to finish before deciding on %s", txn.describe(), batch.decisions())
        self._show_transaction_wait(txn, batch, since)
        try:
            while True:
                if batch.reload:  # systemd waits for READY=1: a reload does not wait for the transaction
                    batch.reload = False
                    self._reload_now()
                try:
                    message: Message | None = self.messages.get(
                        timeout=max(0.0, checked + TRANSACTION_POLL - time.monotonic()))
                except queue.Empty:
                    message = None
                self.beat()
                if message is Request.STOP or self.stop_requested.is_set():
                    log.info("stopping while waiting for %s; the next start reconciles everything", txn.holder())
                    return None
                if message is not None:
                    self._gather(batch, message)
                now = time.monotonic()
                if now - checked < TRANSACTION_POLL:
                    continue
                checked = now
                current = self.transactions.current()
                if current is None:
                    log.info("%s finished after %.1f s; deciding on %s", txn.holder(), now - started,
                             batch.decisions())
                    return batch
                if now - started >= self.config.watch.transaction_timeout:
                    self.transactions.give_up(current)
                    log_event(log, Event.TRANSACTION_TIMEOUT, "waited %.0f s for %s to finish, longer than [watch] "
                              "transaction_timeout; deciding on %s now, and not waiting for it again while it lasts",
                              now - started, current.describe(), batch.decisions(), level=logging.WARNING,
                              path=current.lock.path, waited=f"{now - started:.0f}", holder_pid=current.pid,
                              holder_command=current.command)
                    return batch
                if current != txn:
                    log.info("now waiting for %s", current.describe())
                    txn = current
                self._show_transaction_wait(txn, batch, since)
        finally:
            self.status.transaction_wait = None

    def _show_transaction_wait(self, txn: Transaction, batch: Batch, since: str) -> None:
        """STATUS= and the status file say what the batch waits for (when they change)."""
        line = (f"waiting for {txn.holder()} to finish before deciding on {batch.decisions()} "
                f"(since {since}, lock {txn.lock.path})")
        if line != self.status.transaction_wait:
            self.status.transaction_wait = line
            self.publish_status()

    def _gather(self, batch: Batch, message: Message) -> bool:
        """Add a message to the batch (True), or handle one that is not a change (False)."""
        if isinstance(message, Change):
            batch.changes += 1
            self.last_change = time.monotonic()
            self._classify(batch, message)
            return True
        if isinstance(message, JobDone):
            self._on_job_done(message)
            return False
        if isinstance(message, Verified):
            if self.metrics is not None:
                self.metrics.record_verification(message.results)
            return False
        if message is Request.TICK:
            self.tick_queued.clear()
            return self._tick(batch)
        batch.changes += 1
        batch.slow = True
        if message is Request.RELOAD:
            batch.reload = True
        else:
            batch.full = True
        return True

    def _entry_locations(self) -> EntryLocations:
        """Where the entry sources are, for the watcher (asked whenever it arms its watches)."""
        cache: BootCache | None = getattr(self, "cache", None)
        if cache is None:
            return EntryLocations()
        return EntryLocations(tuple(cache.entry_locations()), cache.esp())

    def _entry_source_prefixes(self) -> tuple[str, ...]:
        if self._entry_prefixes is None:
            names = [str(self.config.paths.entries)]
            with contextlib.suppress(OSError, BootwatchError):
                names += [str(p) for p in self.cache.entry_locations()]
            self._entry_prefixes = tuple(dict.fromkeys(
                p.rstrip("/") + "/" for name in names for p in (name, os.path.realpath(name))))
        return self._entry_prefixes

    def _is_entry_source(self, name: str) -> bool:
        """A change of an entry source: a name in a source's directory, the directory itself, or a
        directory above it (``/boot/loader`` renamed over by ostree's swap, ``loader`` created)."""
        name = name.rstrip("/") + "/"
        return any(name.startswith(prefix) or prefix.startswith(name) for prefix in self._entry_source_prefixes())

    def _tick(self, batch: Batch) -> bool:
        """The main loop's periodic check: a watched directory that changed identity is watched
        again and everything reconciled (True: the batch grew); a replaced cache directory stops
        the daemon."""
        if self.check_cache_replaced():
            return False
        grew = self.watcher.esp_changed()
        if grew:  # mounted, unmounted (an automount expired) or replaced
            log.info("the ESP's mount changed; watching its entries again and reading them")
            self.watcher.rearm_esp()
            batch.changes += 1
            batch.entries_changed = batch.slow = True
        if not self.watcher.needs_rearm():
            return grew
        log_event(log, Event.RESCAN_OVERFLOW, "a watched directory appeared, was removed, replaced or "
                  "remounted; re-arming the watches and reconciling", level=logging.WARNING,
                  reason="watch-lost")
        self.watcher.rearm()
        batch.changes += 1
        batch.full = batch.slow = True
        return True

    def _classify(self, batch: Batch, change: Change) -> None:
        if change.kind is ChangeKind.EVENTS_LOST:
            batch.full = batch.slow = batch.overflow = True
            return
        cache_dir = str(self.config.paths.cache).rstrip("/") + "/"
        for name in change.names():
            if name.startswith(cache_dir) or name.rstrip("/") + "/" == cache_dir:
                self._classify_cache_file(batch, change, name, name[len(cache_dir):])
            elif change.is_directory:  # a directory appeared or went (ostree's loader swap too): everything
                batch.full = batch.slow = True
            elif self._is_entry_source(name):
                batch.entries_changed = batch.slow = True
            else:
                self._classify_boot_file(batch, change, name)

    def _classify_cache_file(self, batch: Batch, change: Change, name: str, relative: str) -> None:
        """bootwatch's own renames in the cache add no work; others' changes of the index or an image do."""
        if relative == INDEX_NAME and not (change.kind is ChangeKind.MOVED
                                           and os.path.basename(change.path).startswith(TEMP_PREFIX)):
            batch.foreign_index = batch.slow = True  # rewritten by someone else: boom writes in place
        image_id = self.reconciler.image_id_of(name)
        if image_id is not None and (change.kind in (ChangeKind.DELETED, ChangeKind.CLOSED) or
                                     (change.kind is ChangeKind.MOVED and name == change.path)):
            batch.image_ids.add(image_id)
            batch.slow = True

    def _classify_boot_file(self, batch: Batch, change: Change, name: str) -> None:
        path = self.reconciler.boot_path_of(name)
        if path is None:
            return
        batch.boot_paths.add(path)
        if change.kind is ChangeKind.CREATED:
            batch.unclosed.add(path)
        elif change.kind is ChangeKind.CLOSED or (change.kind is ChangeKind.MOVED and name == change.dest):
            batch.unclosed.discard(path)
            batch.removed.discard(path)
        else:  # deleted, or renamed away: may need a restore once the references are re-read
            batch.slow = True
            batch.removed.add(path)

    def _apply(self, batch: Batch) -> None:
        self._entry_prefixes = None  # an ostree swap or a reload moves them: the next batch resolves them again
        if self.check_cache_replaced():
            return
        if batch.reload:
            self._reload_now()
        if batch.overflow:
            log_event(log, Event.RESCAN_OVERFLOW, "the inotify queue overflowed: events were lost; "
                      "reconciling everything", level=logging.WARNING, reason="overflow")
        if batch.foreign_index:
            log.log(NOTICE, "the cache index was changed by another program; reloading it and reconciling")
            batch.full = True
        if not (batch.full or batch.entries_changed or batch.boot_paths or batch.image_ids):
            return
        if len(batch.boot_paths) > STORM_PATHS:
            batch.full = True  # a storm: one walk and one bulk check beat thousands of single lookups
        with self.cache.transaction(waiter=self.lock_wait) as txn:
            if batch.full:
                report = self.reconciler.full(txn)
            else:
                report = self.reconciler.paths(txn, batch.boot_paths, entries_changed=batch.entries_changed)
            self.beat()
            txn.flush()
            self.reconciler.check_images(txn, batch.image_ids, report)
            inventory = txn.references.inventory
        # The transaction's parsed index is freed before _after_batch parses the index again for
        # the counts: one parsed index at a time (10,000 paths: about 17 MB of objects each).
        del txn
        self._after_batch(report, full=batch.full, inventory=inventory)

    def _reload_now(self) -> None:
        try:
            self._reload()
        finally:  # READY=1 however the reload ended: systemd must not wait for it for ever
            self.notifier.ready(status=self.status.summary())

    def check_cache_replaced(self) -> bool:
        """Whether the cache path no longer names the directory this daemon opened, checked and
        holds the daemon lock of (removed, or another directory put in its place). Then the
        daemon stops with exit code 1, once: it never works in a directory it did not check, and
        with its lock on the old directory a second daemon could start on the new one.
        systemd (Restart=on-failure) starts it again, and the new daemon checks what is there."""
        if self.exit_code:
            return True
        if self.daemon_lock is None or self._holds_daemon_lock_of(self.config.paths.cache):
            return False
        self.exit_code = 1
        log_event(log, Event.CACHE_DIRECTORY_REPLACED, "%s was removed or replaced: it is no longer the cache "
                  "directory this daemon checked and locked; exiting so that a restart checks and uses the new "
                  "one", self.config.paths.cache, level=logging.ERROR, path=self.config.paths.cache)
        self.stop_requested.set()
        self.wakeup.set()
        return True

    def _note_cache_state(self) -> None:
        """Degraded while the cache's file system is read-only; the I/O errors are over once it is
        writable again or an index write succeeded after them."""
        if self.cache.read_only:
            if self.status.degraded is None:
                self.status.degraded = "degraded: the cache is read-only (restoring from it, caching nothing new)"
                self.io_errors.report(str(self.cache.store.directory), errno.EROFS,
                                      f"{self.cache.store.directory}: the cache's file system is read-only "
                                      "(EROFS): images are still restored from it, nothing new is cached")
            return
        if self.status.degraded is not None:
            self.status.degraded = None
            self.io_errors.clear("the cache is writable again")
        self._clear_io_errors()

    def _clear_io_errors(self) -> None:
        since = self.io_errors.since
        if since is not None and self.cache.index_written_at > since:
            self.io_errors.clear("the cache index was written again")

    def _after_batch(self, report: ReconcileReport, *, full: bool, inventory: Inventory | None = None) -> None:
        """``inventory``: the boot entries the pass read its references from, if it read them."""
        self._note_cache_state()
        now = time.time()
        self._note_references(report.references_unknown)
        self.status.last_batch = now
        if full:
            self.status.last_reconcile = now
        for path in report.retry:
            self._retry_later(Change(ChangeKind.CLOSED, str(self.cache.boot_dir) + path), key=path)
        for path in set(report.cached) | set(report.changed) | set(report.restored):
            self.retries.pop(path, None)
        self._note_new_images(report)
        self._note_written_broken(report)
        busy = self.messages.work_pending > 0  # ticks and job reports are no work: idle all the same
        listing: CacheListing | None = None  # the index is read once per batch, for the counts and the metrics
        # The boot entries: as the pass read them; read here only when it did not.
        if inventory is None and (full or not busy or now - self.counts_time >= COUNTS_REFRESH):
            inventory = self._read_inventory()
        census = Census.of(inventory) if inventory is not None else None
        if census is not None:
            self._note_entries(census)
        if inventory is not None:
            self.inventory = inventory  # for the proof metrics of a later job's write
            if busy and now - self.health_time < COUNTS_REFRESH:
                self.health_due = inventory  # once the worker is idle (_worker_loop)
            else:
                self._check_health(inventory)
        if not busy or now - self.counts_time >= COUNTS_REFRESH:
            listing = self._refresh_counts(now)
        else:
            self.counts_due = True  # once the worker is idle (_worker_loop), as the health pass
        self.publish_status()
        if self.metrics is not None:
            self._write_metrics(full=full, listing=listing, census=census)

    def _refresh_counts(self, now: float) -> CacheListing:
        """The status's counts of cached paths by state, from the index as it is now."""
        listing = CacheListing.read(self.cache)
        if listing.error is None:
            self.status.set_counts(listing.statuses)
            self.status.error = None
        else:
            self.status.error = str(listing.error)
            log.error("%s", listing.error)
        self.counts_time = now
        self.counts_due = False
        return listing

    def _note_written_broken(self, report: ReconcileReport) -> None:
        """Keep STATUS= and the metric on the new images written broken (the journal said each at
        once) while each is its path's newest: until a new image replaces it or 'restore --image'
        puts an older one back."""
        broken = self.written_broken
        # A new image replaced it, or the file is gone (the kernel purged: the journal says it is missing).
        for path in set(report.cached) | set(report.changed) | set(report.restored) | set(report.missing):
            broken.pop(path, None)
        broken.update((b.path, b) for b in report.written_broken)
        if broken and not report.written_broken:
            try:
                index = self.cache.load_index()
            except (BootwatchError, OSError):
                index = None  # kept until the index can be read
            if index is not None:
                for path, b in list(broken.items()):
                    if path not in index or index.newest(path) != b.image_id:
                        del broken[path]
        text = None
        if broken:
            first = broken[min(broken)]
            text = f"new image {first.image_id[:12]} of {first.path} is BROKEN ({first.problem}): {first.remedy()}"
            if len(broken) > 1:
                text += f" (and {len(broken) - 1} more, see the journal)"
        self.status.written_broken = None if text is None else printable(text)  # a line, whatever the path holds
        if self.metrics is not None:
            self.metrics.record_written_broken(len(broken))

    def _check_health_due(self) -> None:
        """The health pass and the counts a busy batch left for later (:meth:`_after_batch`), now
        that the burst after it asked for nothing (the close of the daemon's own cache lock counts
        as work until it is classified): with their STATUS and metrics."""
        if self.health_due is None and not self.counts_due:
            return
        listing = self._refresh_counts(time.time()) if self.counts_due else None
        if self.health_due is not None:
            self._check_health(self.health_due)
        self.publish_status()
        if self.metrics is not None:
            self._write_metrics(full=False, listing=listing)

    def _read_inventory(self) -> Inventory | None:
        """The boot entries of every source, as the inventory finds them now."""
        try:
            return self.cache.read_inventory()
        except (BootwatchError, OSError) as e:  # the inventory reports what it cannot read; this is a bug's net
            log.error("cannot read the boot entries: %s", e)
            return None

    def _check_health(self, inventory: Inventory) -> None:
        """The health pass (:mod:`bootwatch.daemon.health`): the status's and the metrics' counts by
        state, the journal's transitions. Outside the cache lock; its facts memo makes a pass over
        unchanged images a stat of each."""
        self.health_due = None
        self.health_time = time.time()
        healths = self.health.check(self.cache, inventory, progress=self.beat, cancel=self.stop_requested)
        if healths is None:
            return
        self.status.set_health(healths)
        if self.metrics is not None:
            self.metrics.record_entry_states(count_states(healths))

    def _note_entries(self, census: Census) -> None:
        """Say once (journal, then STATUS and the status file) that there is no boot entry to keep
        bootable, and when there are entries again; the next time it becomes so it is said again."""
        warning = census.warning
        if warning is not None and self.status.entries_warning is None:
            log_event(log, Event.NO_BOOT_ENTRIES, "%s; nothing is kept bootable (hint: %s)", warning,
                      NO_ENTRIES_HINT, level=logging.WARNING, path=self.config.paths.boot, reason=warning)
        elif warning is None and self.status.entries_warning is not None:
            log.log(NOTICE, "boot entries found again: %s", census.text())
        self.status.set_entries(census)
        self.census = census

    def _note_references(self, unknown: str | None) -> None:
        """Say once (journal, then STATUS) that the references became unknown, and when they are known again.

        The metric (bootwatch_references_unknown) is computed when the metrics are written.
        """
        if unknown is not None and self.status.references_unknown is None:
            log_event(log, Event.REFERENCES_UNKNOWN, "boot entry references are unknown: %s; nothing is uncached, "
                      "trimmed, un-restored or deleted until they can be read", unknown, level=logging.WARNING,
                      path=self.config.paths.entries, reason=unknown)
        elif unknown is None and self.status.references_unknown is not None:
            log.log(NOTICE, "the boot entries can be read again (%s); cleaning resumes", self.config.paths.entries)
        self.status.references_unknown = unknown

    def _retry_later(self, message: Message, *, key: str) -> None:
        tries = self.retries.get(key, 0)
        if tries >= MAX_RETRIES:
            log.warning("%s: giving up after %d tries; the next reconcile tries again", key, tries)
            self.retries.pop(key, None)
            return
        self.retries[key] = tries + 1
        timer = threading.Timer(RETRY_DELAY * (tries + 1), self.messages.put, args=(message,))
        timer.daemon = True
        timer.start()

    def publish_status(self) -> None:
        """The status file and systemd's STATUS= line, from :attr:`status`."""
        self._write_status()
        self.notifier.status(self.status.summary())

    def _write_status(self) -> None:
        try:
            write_status(self.config.paths.runtime, self.status)
        except OSError as e:
            log.warning("cannot write the status file in %s: %s", self.config.paths.runtime, e.strerror)

    # ---------------------------------------------------------------- reload (worker)

    def _reload(self) -> None:
        """Apply a new configuration (between batches); a bad one keeps the old."""
        try:
            new, new_cache = self._open_reloaded()
        except (BootwatchError, OSError) as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            return
        old = self.config
        self.config = new
        setup_logging(new.log.level)
        if new_cache is not None:
            self.cache = new_cache
            self.watcher.retarget(new.paths.boot, new.paths.entries, new.paths.cache)
            self.status.boot_dir, self.status.cache_dir = str(new.paths.boot), str(new.paths.cache)
        else:  # the worker's own caching reads it; the clean job takes keep from its JobSettings
            self.cache.keep = new.cache.keep
        if new.watch.locks() != old.watch.locks():
            self.transactions = TransactionMonitor(new.watch.locks())
        reported = self.reconciler.reported_missing
        self.reconciler = self._new_reconciler(new)
        self.reconciler.reported_missing = reported
        if new.metrics.textfile != old.metrics.textfile:
            self.metrics = Metrics(new.metrics.textfile) if new.metrics.textfile else None
        self._configure_proofs(new_cache=new_cache is not None)
        if self.scheduler is not None:
            if new_cache is not None:  # the jobs hold the old cache: a new scheduler for the new one
                self._stop_scheduler()
                self._start_scheduler()
            else:  # same cache: new intervals, and running jobs are not interrupted
                self.scheduler.reschedule(new)
        log_event(log, Event.CONFIG_RELOADED, "configuration reloaded from %s%s",
                  ", ".join(str(s) for s in new.sources) or "embedded defaults",
                  "" if new.paths == old.paths else " (paths changed: watches re-armed)")
        self.messages.put(Request.RESCAN)

    def _open_reloaded(self) -> tuple[Config, BootCache | None]:
        """The new configuration, and its cache if the paths changed, with the daemon lock moved
        to it. Raises (and changes nothing) if either cannot be had."""
        new = load_daemon_config(*self.sources)
        if new.paths == self.config.paths:
            return new, None
        new_cache = open_cache(new)
        new_cache.cancel = self.stop_requested
        if not self._holds_daemon_lock_of(new.paths.cache):
            new_lock = new_cache.store.hold_daemon_lock()
            self._release_daemon_lock()
            self.daemon_lock = new_lock
        return new, new_cache

    def _new_reconciler(self, config: Config) -> Reconciler:
        reconciler = Reconciler(config, self.cache)
        reconciler.io_errors = self.io_errors
        return reconciler

    def _holds_daemon_lock_of(self, cache_dir: Path) -> bool:
        """Whether the daemon lock held now is on ``cache_dir`` (however the path is spelled):
        a second flock on the same directory would be refused by our own."""
        if self.daemon_lock is None:
            return False
        held = os.fstat(self.daemon_lock)
        try:
            st = os.stat(cache_dir)
        except OSError:
            return False
        return (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino)

    # ---------------------------------------------------------------- jobs and metrics (worker)

    def _configure_proofs(self, *, new_cache: bool) -> None:
        """The proof job as ``[prove] on_new_kernel`` says (at start and at a reload): made, or
        cancelled (its VM killed) and dropped. A new cache needs a new job (and a new scheduler,
        which takes it); what the old one had pending is kept."""
        old = self.proof_job
        wanted = self.config.prove.on_new_kernel
        if old is not None and (not wanted or new_cache):
            old.cancel()
            self.proof_job = None
            if self.scheduler is not None and not new_cache:
                self.scheduler.remove_job("prove")
            log.info("boot proofs of new kernels: off" if not wanted else "boot proofs: moved to the new cache")
        if wanted and self.proof_job is None:
            job = ProofJob(self.cache, ProofStore(self.config.paths.runtime), settings=self._job_config,
                           quiet=self._quiet, logger=log)
            if old is not None:
                job.take_over(old)
            self.proof_job = job
            if self.scheduler is not None and not new_cache:
                self.scheduler.add_job("prove", job.run)
            if old is None:
                log.info("boot proofs of new kernels: on (%s)", ProofStore(self.config.paths.runtime).directory)

    def _job_config(self) -> Config:
        """The configuration a job run starts with: the scheduler's, swapped whole by a reload."""
        return self.scheduler.settings.config if self.scheduler is not None else self.config

    def _quiet(self) -> bool:
        """No change in hand or waiting, and none for ``[watch] settle`` (read by the proof job)."""
        return (self.busy_since is None and self.messages.work_pending == 0
                and time.monotonic() - self.last_change >= self.config.watch.settle)

    def _note_new_images(self, report: ReconcileReport) -> None:
        """Hand the proof job what a pass cached or saw change, and ask for a run if one is needed."""
        if self.proof_job is not None and self.proof_job.note_images([*report.cached, *report.changed]):
            self._ask_for_proofs()

    def _ask_for_proofs(self) -> None:
        if self.scheduler is not None and self.proof_job is not None and self.proof_job.pending:
            self.scheduler.run_now("prove")

    def _start_scheduler(self) -> None:
        messages = self.messages

        def on_verified(results: list[ImageVerification]) -> None:  # job threads: only send
            messages.put(Verified(tuple(results)))

        self.scheduler = MaintenanceScheduler(
            self.config, self.cache, jobs={"rescan": lambda: messages.put(Request.RESCAN),
                                           "prove": self.proof_job.run if self.proof_job is not None else None},
            on_job_done=lambda name, duration, ok: messages.put(JobDone(name, duration, ok)),
            on_verified=on_verified, logger=log, io_errors=self.io_errors)
        self.scheduler.start()

    def _cancel_proofs(self) -> None:
        if self.proof_job is not None:
            self.proof_job.cancel()  # its VM is killed now, not after the jobs' stop timeout

    def _stop_scheduler(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(timeout=JOBS_STOP_TIMEOUT)
            self.scheduler = None

    def _on_job_done(self, done: JobDone) -> None:
        if done.ok:
            self._clear_io_errors()
        if done.name == "prove" and self.inventory is not None:
            # A failed proof of an entry's current files makes it BROKEN: STATUS, the journal and
            # the metrics say so now, not at the next batch.
            self._check_health(self.inventory)
            self.publish_status()
        if self.metrics is not None:
            self.metrics.record_job(done.name, done.duration, done.ok)
            self._write_metrics(full=False)

    def _write_metrics(self, *, full: bool, listing: CacheListing | None = None, census: Census | None = None) -> None:
        assert self.metrics is not None
        try:
            if full and self.status.last_reconcile:
                self.metrics.record_reconcile(self.status.last_reconcile)
            # A job's report reuses the boot entries of the last pass rather than reading them again.
            self.metrics.write(self.cache, pins_count=count_pins(self.cache), listing=listing,
                               census=census if census is not None else self.census,
                               proofs=proof_samples(ProofStore(self.config.paths.runtime), self.inventory))
        except (OSError, BootwatchError) as e:
            log.warning("cannot write metrics to %s: %s", self.config.metrics.textfile, e)


def run_daemon(config_file: Path | None, boot: Path | None, cache: Path | None) -> int:
    """``bootwatch run``. A ConfigError escapes before anything starts (exit 78)."""
    return Daemon(config_file, boot, cache).run()
