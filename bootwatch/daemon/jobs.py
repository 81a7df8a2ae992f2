"""The daemon's scheduled maintenance: clean, gc, verify, rescan and the boot proofs, on APScheduler 3.x.

**Schedule.** Each job runs on an interval trigger with ``coalesce=True`` (runs that piled up
are one run), ``max_instances=1`` (a run that is due while the previous one is still going is
skipped, with APScheduler's warning) and ``misfire_grace_time=None``. APScheduler compares the
wall clock with the planned run time; after a suspend or a hibernation the clock has jumped past
the planned time, and with a finite grace time a run that is late by more than it is dropped
(``EVENT_JOB_MISSED``), so a laptop that sleeps through the night would skip the daily verify
every day. ``None`` means "run however late", and ``coalesce`` makes that one run, not one per
missed interval.

**Verify spreads its work.** ``[jobs] verify_interval`` is the period in which every image is
re-hashed once. The verify job runs every :func:`verify_run_period` (a 24th of the interval,
at least a minute, at most the interval) and re-hashes the least recently verified
``ceil(n * period / interval)`` images, so a day's worth of reading is spread over the day. The
time of the last verification is in the index, so the order survives restarts. Hashing runs
without the cache lock (images are never written in place); the results are recorded under it.

**Run now.** A job the daemon supplies can be asked to run at once (:meth:`MaintenanceScheduler.run_now`:
the boot proof job after a batch cached a new kernel), and added or removed while the scheduler runs
(a reload that turns it on or off); its interval is then the safety net.

**Failures.** A job that raises is logged once, with its traceback, as ``Event.JOB_FAILED``
(an ``EVENT_JOB_ERROR`` listener); the scheduler and the daemon go on. APScheduler's own copy of
that log record is dropped (see :class:`_RunLogFilter`) so the journal has one entry per failure.
A failing cache file system (:class:`~bootwatch.errors.StorageError`, or an ``OSError``) is not
a bug: it is one ``IO_ERROR`` line per file and errno (:class:`~bootwatch.log.IoErrorLog`),
without a traceback, however many runs it fails. Nor is any other
:class:`~bootwatch.errors.BootwatchError` (a corrupt index, an unsafe cache directory): one
``JOB_FAILED`` line without a traceback, said again only when the problem changes, and a line
when the job succeeds again.

**Bounded shutdown.** ``BackgroundScheduler.shutdown(wait=True)`` waits for running jobs without
a limit. Jobs run here in daemon threads of :class:`_ThreadExecutor`; :meth:`shutdown` stops the
scheduler without waiting, sets :attr:`MaintenanceScheduler.stopping` (the verify job checks it
between images; a job the daemon supplies should too) and joins the job threads until the
deadline. A job still running then is abandoned: it dies with the process, which the cache's
on-disk protocol treats like any crash (temp files are removed by the next writer).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.base import BaseExecutor, run_job
from apscheduler.job import Job as ScheduledJob
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bootwatch.cache import pins
from bootwatch.cache.hashing import Cancelled
from bootwatch.cache.index import CacheIndex
from bootwatch.cache.operations import BootCache, ImageVerification
from bootwatch.cache.policy import keep_unreferenced_predicate
from bootwatch.config import Config
from bootwatch.errors import (
    BootwatchError,
    DeletionsBlockedError,
    ReferencesUnknownError,
    StorageError,
    describe_oserror,
)
from bootwatch.log import NOTICE, Event, IoErrorLog, counted, log_event, short_id

JOB_NAMES = ("clean", "gc", "verify", "rescan", "prove")
# The job store every job is added to (APScheduler's memory store under its default name): the
# executor hands it to run_job() for the events it makes.
JOBSTORE = "default"
# The logger APScheduler's run_job() writes to for our jobs (see _RunLogFilter).
RUN_LOGGER = "bootwatch.daemon.jobs.run"

VERIFY_SLICES = 24
MIN_VERIFY_PERIOD = 60.0

Job = Callable[[], None]
JobDone = Callable[[str, float, bool], None]


def verify_run_period(verify_interval: float) -> float:
    """How often the verify job runs: 1h for the default 1d, never more than once a minute,
    and never less often than the interval itself."""
    return min(verify_interval, max(verify_interval / VERIFY_SLICES, MIN_VERIFY_PERIOD))


def verify_batch_size(image_count: int, run_period: float, verify_interval: float) -> int:
    """Images per run so that all are verified within ``verify_interval``."""
    if image_count <= 0:
        return 0
    return min(image_count, math.ceil(image_count * run_period / verify_interval))


@dataclass(frozen=True)
class JobSettings:
    """What the jobs take from the configuration, as one value.

    The worker swaps it whole (:meth:`MaintenanceScheduler.reschedule`, one assignment) and a job
    reads it once when it starts: a run never sees half of a reload (the new config with the old
    verify period, the old track policy with the new ``keep``).
    """

    config: Config
    verify_period: float  # how often the verify job runs (verify_run_period)

    @classmethod
    def of(cls, config: Config) -> JobSettings:
        return cls(config, verify_run_period(config.jobs.verify_interval))

    @property
    def verify_bound(self) -> float:
        """Seconds a verify run may take: its run period (the next run is due then, and skipped
        while this one goes on), but at least :data:`MIN_VERIFY_PERIOD`."""
        return max(self.verify_period, MIN_VERIFY_PERIOD)


def verify_images(cache: BootCache, index: CacheIndex, ids: Sequence[str], bound: float, *,
                  stopping: threading.Event, logger: logging.Logger) -> list[ImageVerification]:
    """Re-hash and check ``ids`` in this order for at most ``bound`` seconds; nothing is recorded.

    The content check of an image (the walk of a filesystem or an initramfs) gives up at the
    bound (the result is ``unchecked``), and once it is past, the images left wait (with a
    warning). ``stopping`` set: the results so far.
    """
    deadline = time.monotonic() + bound
    results: list[ImageVerification] = []
    for image_id in ids:
        if stopping.is_set():
            break  # shutting down: record what was done
        if time.monotonic() >= deadline:
            logger.warning("verify: the run reached its bound of %s s after %d of %s; the rest "
                           "are verified first at the next run", f"{bound:g}", len(results), counted(len(ids), "image"))
            break
        try:
            results.append(cache.verify_image(index, image_id, deadline=deadline))
        except Cancelled:  # the daemon stops in the middle of an image: it has no result
            break
    return results


def least_recently_verified(index: CacheIndex) -> list[str]:
    """Listed image ids, never verified first, then by the time of their last verification."""
    def key(image_id: str) -> tuple[float, str]:
        verified = index.verification(image_id)
        when = verified["time"] if verified is not None else None
        return (when if when is not None else 0, image_id)
    return sorted(index.all_image_ids(), key=key)


class _RunLogFilter(logging.Filter):
    """Keeps only warnings without a traceback (a missed run) from APScheduler's job runner.

    Its "Running job"/"executed successfully" lines are noise at the default level (gc runs each
    minute; the job wrapper logs at debug), and its traceback of a failed job would duplicate the
    JOB_FAILED entry.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not record.exc_info


class _ThreadExecutor(BaseExecutor):  # type: ignore[misc]  # APScheduler 3.x ships no types
    """Runs each job in a new daemon thread and can join them with a deadline.

    A thread per run is cheap at these intervals (minutes) and, unlike concurrent.futures'
    workers, a daemon thread does not hold up interpreter exit once shutdown gave up on it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()

    def _do_submit_job(self, job: ScheduledJob, run_times: list[datetime]) -> None:
        """The method a custom executor implements (APScheduler's "extending" guide)."""
        def run() -> None:
            try:
                events = run_job(job, JOBSTORE, run_times, RUN_LOGGER)
            except BaseException:
                self._run_job_error(job.id, *sys.exc_info()[1:])
            else:
                self._run_job_success(job.id, events)
            finally:
                with self._threads_lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=f"bootwatch-job-{job.id}", daemon=True)
        with self._threads_lock:
            self._threads.add(thread)
        thread.start()

    def running(self) -> list[str]:
        with self._threads_lock:
            return sorted(t.name for t in self._threads)

    def join(self, deadline: float) -> bool:
        """Wait for the running jobs until ``deadline`` (time.monotonic()); True if all ended."""
        while True:
            with self._threads_lock:
                threads = list(self._threads)
            if not threads:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            threads[0].join(remaining)


class MaintenanceScheduler:
    """The clean, gc, verify and (when the daemon gives them) rescan and prove jobs on their intervals.

    ``jobs`` maps a name from :data:`JOB_NAMES` to the callable to run; a name mapped to None is
    not scheduled. clean, gc and verify have defaults; rescan and prove run only if given.
    ``on_job_done(name, duration_seconds, ok)`` is called in the job's thread after every run
    (for metrics); ``on_verified(results)`` after every verify slice that the default verify ran.
    """

    def __init__(self, config: Config, cache: BootCache, *,
                 jobs: Mapping[str, Job | None] | None = None,
                 on_job_done: JobDone | None = None,
                 on_verified: Callable[[list[ImageVerification]], None] | None = None,
                 logger: logging.Logger | None = None,
                 io_errors: IoErrorLog | None = None) -> None:
        # Replaced whole by reschedule(), read once by each job run (see JobSettings).
        self.settings = JobSettings.of(config)
        # A failing cache file system fails every job: one line per file and errno, no traceback.
        self.io_errors = io_errors or IoErrorLog(logger or logging.getLogger("bootwatch.daemon.jobs"))
        self.cache = cache
        self.logger = logger or logging.getLogger("bootwatch.daemon.jobs")
        self.on_job_done = on_job_done
        self.on_verified = on_verified
        self.stopping = threading.Event()
        self._clean_blocked: str | None = None  # why the last clean was skipped
        self._problems: dict[str, str] = {}  # job name -> the BootwatchError it last failed with
        self._problems_lock = threading.Lock()
        defaults: dict[str, Job | None] = {"clean": self.clean, "gc": self.gc, "verify": self._verify_job,
                                           "rescan": None, "prove": None}
        for name in (jobs or {}):
            if name not in JOB_NAMES:
                raise ValueError(f"unknown job {name!r}; expected one of {', '.join(JOB_NAMES)}")
        defaults.update(jobs or {})
        self.jobs: dict[str, Job] = {name: func for name, func in defaults.items() if func is not None}
        self.intervals = self._intervals(self.settings)
        run_logger = logging.getLogger(RUN_LOGGER)
        if not any(isinstance(f, _RunLogFilter) for f in run_logger.filters):
            run_logger.addFilter(_RunLogFilter())
        self._executor = _ThreadExecutor()
        self._scheduler = BackgroundScheduler(timezone=timezone.utc, executors={"default": self._executor},
                                              job_defaults={"coalesce": True, "max_instances": 1,
                                                            "misfire_grace_time": None})
        self._scheduler.add_listener(self._on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        for name, func in self.jobs.items():
            self._add(name, func)

    def _add(self, name: str, func: Job) -> None:
        self._scheduler.add_job(self._wrap(name, func), IntervalTrigger(seconds=self.intervals[name],
                                                                         timezone=timezone.utc),
                                id=name, name=name, jobstore=JOBSTORE, coalesce=True, max_instances=1,
                                misfire_grace_time=None)

    # ---------------------------------------------------------------- control

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self, timeout: float) -> bool:
        """Stop scheduling, ask running jobs to stop, wait for them at most ``timeout`` seconds.

        Returns True if no job is running any more; otherwise the jobs still running are logged
        and abandoned (they are daemon threads).
        """
        deadline = time.monotonic() + timeout
        self.stopping.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self._executor.join(deadline):
            return True
        self.logger.warning("jobs still running after %.1fs, abandoned: %s", timeout,
                            ", ".join(self._executor.running()))
        return False

    def add_job(self, name: str, func: Job) -> None:
        """Schedule a job the daemon supplies (one of :data:`JOB_NAMES` not scheduled now)."""
        if name not in JOB_NAMES or name in self.jobs:
            raise ValueError(f"job {name!r} is unknown or scheduled already")
        self.jobs[name] = func
        self._add(name, func)

    def remove_job(self, name: str) -> None:
        """Stop scheduling ``name``; a run in progress goes on (the daemon tells it to stop)."""
        if self.jobs.pop(name, None) is not None:
            self._scheduler.remove_job(name)

    def run_now(self, name: str) -> None:
        """Run ``name`` as soon as the scheduler can (skipped, like a due run, while one is running)."""
        if name in self.jobs:
            self._scheduler.modify_job(name, next_run_time=datetime.now(timezone.utc))

    def reschedule(self, config: Config) -> None:
        """Apply the intervals of a reloaded configuration (the jobs stay the same).

        A job's next run is one new interval from now; a change of the cache or boot directory
        needs a new scheduler (and a new BootCache), which this does not do.
        """
        settings = JobSettings.of(config)
        new = self._intervals(settings)
        for name in self.jobs:
            if new[name] != self.intervals[name]:
                self._scheduler.reschedule_job(name, trigger=IntervalTrigger(seconds=new[name], timezone=timezone.utc))
        self.intervals = new
        self.settings = settings  # one assignment: a run that starts now sees all of the new settings

    @staticmethod
    def _intervals(settings: JobSettings) -> dict[str, float]:
        config = settings.config
        return {
            "clean": config.jobs.clean_interval,
            "gc": config.jobs.gc_interval,
            "verify": settings.verify_period,
            "rescan": config.watch.rescan_interval,
            "prove": config.watch.rescan_interval,  # the safety net of its runs asked for by batches
        }

    # ---------------------------------------------------------------- plumbing

    def _wrap(self, name: str, func: Job) -> Job:
        def run() -> None:
            started = time.monotonic()
            ok = False
            self.logger.debug("job %s started", name)
            try:
                func()
                ok = True
            except Cancelled:  # the daemon stops (while the job waited for the lock, or copied)
                self.logger.debug("job %s stopped", name)
            except StorageError as e:
                self.io_errors.report(e.filename, e.errno, f"job {name}: {e}", hint=e.hint)
            except OSError as e:
                self.io_errors.report(e.filename or str(self.cache.store.directory), e.errno or 0,
                                      f"job {name}: {describe_oserror(e)}")
            except BootwatchError as e:  # a corrupt index, an unsafe directory: bad input, not a bug
                self._report_problem(name, e)
            else:
                self._problem_over(name)
            finally:
                duration = time.monotonic() - started
                self.logger.debug("job %s %s after %.3fs", name, "done" if ok else "failed", duration)
                if self.on_job_done is not None:
                    try:
                        self.on_job_done(name, duration, ok)
                    except Exception:
                        self.logger.exception("on_job_done callback failed for job %s", name)
        run.__name__ = run.__qualname__ = f"bootwatch_job_{name}"
        return run

    def _report_problem(self, name: str, error: BootwatchError) -> None:
        """One line per job and distinct problem, not one per run: it is said again only once
        the problem changed (or was over meanwhile)."""
        problem = str(error) + (f" (hint: {error.hint})" if error.hint else "")
        with self._problems_lock:
            if self._problems.get(name) == problem:
                return
            self._problems[name] = problem
        log_event(self.logger, Event.JOB_FAILED, "job %s failed: %s", name, problem, level=logging.ERROR,
                  job=name)

    def _problem_over(self, name: str) -> None:
        with self._problems_lock:
            problem = self._problems.pop(name, None)
        if problem is not None:
            self.logger.log(NOTICE, "job %s succeeded again (it failed with: %s)", name, problem)

    def _on_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_ERROR:
            exc = event.exception
            log_event(self.logger, Event.JOB_FAILED, "job %s failed: %s", event.job_id, exc, level=logging.ERROR,
                      exc_info=(type(exc), exc, exc.__traceback__), job=event.job_id)
        elif event.code == EVENT_JOB_MISSED:
            self.logger.warning("job %s missed its run at %s", event.job_id, event.scheduled_run_time)

    # ---------------------------------------------------------------- the default jobs

    def clean(self) -> None:
        config = self.settings.config  # this run's settings, whatever a reload does meanwhile
        try:
            report = self.cache.clean(keep=config.cache.keep,
                                      keep_unreferenced=keep_unreferenced_predicate(config, self.cache))
        except DeletionsBlockedError as e:
            # Not a failure of the job: cleaning now could delete what is still needed. Said once
            # per reason, not every hour; unknown references the daemon reports itself
            # (Event.REFERENCES_UNKNOWN, STATUS, the metric).
            if str(e) != self._clean_blocked:
                level = logging.DEBUG if isinstance(e, ReferencesUnknownError) else logging.WARNING
                self.logger.log(level, "clean: skipped: %s%s", e, f" (hint: {e.hint})" if e.hint else "")
            self._clean_blocked = str(e)
            return
        self._clean_blocked = None
        if report.uncached_paths or report.deleted_images or report.removed_temp_files:
            self.logger.info("clean: uncached %s, deleted %s, removed %s", counted(len(report.uncached_paths), "path"),
                             counted(len(report.deleted_images), "image"),
                             counted(len(report.removed_temp_files), "temp file"))

    def gc(self) -> None:
        report = pins.gc(self.cache)
        if report.removed:
            self.logger.info("gc: removed %s of dead owners: %s", counted(len(report.removed), "pin"),
                             ", ".join(report.removed))

    def _verify_job(self) -> None:
        self.verify_slice()

    def verify_slice(self) -> list[ImageVerification]:
        """Re-hash the least recently verified images, as many as this run's share and as its
        bound allows (:func:`verify_images`, :attr:`JobSettings.verify_bound`): an image whose
        content check is cut off there is recorded ``unchecked``, without a time, and the images
        left wait; both come first at the next run (least recently verified)."""
        settings = self.settings  # this run's settings, whatever a reload does meanwhile
        index = self.cache.load_index()
        ids = least_recently_verified(index)
        count = verify_batch_size(len(ids), settings.verify_period, settings.config.jobs.verify_interval)
        results = verify_images(self.cache, index, ids[:count], settings.verify_bound, stopping=self.stopping,
                                logger=self.logger)
        # An image that a clean, remove or trim deleted meanwhile is dropped here, not reported.
        results = self.cache.record_verifications(results)
        for result in results:
            if result.unchecked:
                self.logger.warning("verify: image %s of %s was hashed, but its content check was cut off at the "
                                    "run's bound (%s); it is verified first at the next run", short_id(result.image_id),
                                    ", ".join(result.paths) or "(no path)", result.message)
            elif not result.ok:
                log_event(self.logger, Event.VERIFY_FAILED, "image %s of %s failed verification: %s",
                          short_id(result.image_id), ", ".join(result.paths) or "(no path)", result.message,
                          level=logging.ERROR, image_id=result.image_id,
                          path=result.paths[0] if result.paths else None)
        if self.on_verified is not None:
            self.on_verified(results)
        return results
