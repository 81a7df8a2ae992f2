"""The maintenance scheduler: real APScheduler, real threads, a real cache on disk."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import imagefactory
import pytest
from polling import wait_until

from bootwatch.cache.operations import BootCache
from bootwatch.cache.store import LOCK_NAME
from bootwatch.config import Config, load_config
from bootwatch.daemon.jobs import (
    JobSettings,
    MaintenanceScheduler,
    least_recently_verified,
    verify_batch_size,
    verify_images,
    verify_run_period,
)
from bootwatch.log import FIELDS_ATTR, Event
from bootwatch.verify import ImageKind, Outcome

KERNELS = ["/vmlinuz-6.1.0-a", "/vmlinuz-6.1.0-b", "/vmlinuz-6.1.0-c"]


def make_config(tmp_path: Path, *, interval: str = "1s", verify: str = "1s", keep: int = 2,
                name: str = "bootwatch.toml") -> Config:
    boot = tmp_path / "boot"
    (boot / "loader" / "entries").mkdir(parents=True, exist_ok=True)
    toml = tmp_path / name
    toml.write_text(f'[paths]\nboot = "{boot}"\ncache = "{tmp_path / "cache"}"\n'
                    f'[jobs]\nclean_interval = "{interval}"\ngc_interval = "{interval}"\n'
                    f'verify_interval = "{verify}"\n[watch]\nrescan_interval = "{interval}"\n[cache]\nkeep = {keep}\n')
    return load_config(toml)


def scheduled_jobs(scheduler: MaintenanceScheduler) -> dict[str, Any]:
    """The APScheduler jobs by name, as the scheduler registered them."""
    return {job.id: job for job in scheduler._scheduler.get_jobs()}


def run_now(scheduler: MaintenanceScheduler, name: str) -> None:
    """Make job ``name`` due now (on the scheduler's thread, honouring max_instances=1)."""
    scheduler._scheduler.modify_job(name, next_run_time=datetime.now(timezone.utc))


def job_threads() -> list[str]:
    """The job threads alive in this process (the executor names them bootwatch-job-NAME)."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("bootwatch-job-"))


def make_cache(config: Config) -> BootCache:
    cache = BootCache.from_config(config)
    for n, path in enumerate(KERNELS):
        (cache.boot_dir / path[1:]).write_bytes(f"kernel {n}\n".encode() * 1000)
        # An entry references each, so clean keeps them.
        (cache.entries_dir / f"test-{n}.conf").write_text(f"title test {n}\nlinux {path}\n")
    cache.add(KERNELS)
    return cache


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, event: Event) -> list[logging.LogRecord]:
        return [r for r in self.records
                if getattr(r, FIELDS_ATTR, {}).get("MESSAGE_ID") == event.message_id]


@pytest.fixture
def records() -> Iterator[tuple[logging.Logger, Records]]:
    logger = logging.getLogger(f"bootwatch.test.jobs.{time.monotonic_ns()}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = Records()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


class Runs:
    """on_job_done that counts runs, thread-safely."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: Counter = Counter()
        self.failed: Counter = Counter()

    def __call__(self, name: str, duration: float, ok: bool) -> None:
        assert duration >= 0
        with self.lock:
            (self.done if ok else self.failed)[name] += 1


@pytest.mark.slow
def test_jobs_run_on_their_intervals(tmp_path: Path, records) -> None:
    logger, _ = records
    config = make_config(tmp_path)
    cache = make_cache(config)
    runs = Runs()
    rescans: list[float] = []
    scheduler = MaintenanceScheduler(config, cache, jobs={"rescan": lambda: rescans.append(time.time())},
                                     on_job_done=runs, logger=logger)
    scheduler.start()
    try:
        assert wait_until(lambda: all(runs.done[n] >= 2 for n in ("clean", "gc", "verify", "rescan"))), runs.done
    finally:
        assert scheduler.shutdown(10)
    assert len(rescans) >= 2
    assert runs.failed == Counter()
    index = cache.load_index()
    # verify_interval = 1s: every run verifies every image, and records it in the index.
    for image_id in index.all_image_ids():
        assert index.image_extra(image_id)["verified"]["ok"] is True
    assert set(index.paths()) == set(KERNELS), "clean removed referenced paths"


def test_schedule_settings(tmp_path: Path) -> None:
    config = make_config(tmp_path, interval="2m", verify="1d")
    scheduler = MaintenanceScheduler(config, BootCache.from_config(config), jobs={"rescan": lambda: None})
    jobs = scheduled_jobs(scheduler)
    assert sorted(jobs) == ["clean", "gc", "rescan", "verify"]
    for name, job in jobs.items():
        assert job.coalesce is True
        assert job.max_instances == 1
        assert job.misfire_grace_time is None, f"{name} would drop a run that is late after a suspend"
    assert jobs["clean"].trigger.interval.total_seconds() == 120
    assert jobs["rescan"].trigger.interval.total_seconds() == 120
    # A day of verification is spread over 24 hourly slices.
    assert jobs["verify"].trigger.interval.total_seconds() == 3600
    scheduler.reschedule(make_config(tmp_path / "reloaded", interval="5m", verify="2d"))
    jobs = scheduled_jobs(scheduler)
    assert jobs["gc"].trigger.interval.total_seconds() == 300
    assert jobs["verify"].trigger.interval.total_seconds() == 7200
    assert jobs["gc"].misfire_grace_time is None and jobs["gc"].max_instances == 1
    without = MaintenanceScheduler(config, BootCache.from_config(config), jobs={"verify": None})
    assert sorted(scheduled_jobs(without)) == ["clean", "gc"]
    with pytest.raises(ValueError):
        MaintenanceScheduler(config, BootCache.from_config(config), jobs={"defrag": lambda: None})


def test_verify_period_and_batch() -> None:
    assert verify_run_period(86400) == 3600
    assert verify_run_period(1) == 1
    assert verify_run_period(3600) == 150
    assert verify_batch_size(0, 3600, 86400) == 0
    assert verify_batch_size(3, 3600, 86400) == 1
    assert verify_batch_size(100, 3600, 86400) == 5
    assert verify_batch_size(7, 1, 1) == 7


def test_verify_slices_take_the_least_recently_verified(tmp_path: Path, records) -> None:
    logger, _ = records
    config = make_config(tmp_path, verify="1d")
    cache = make_cache(config)
    scheduler = MaintenanceScheduler(config, cache, logger=logger)
    seen = []
    for _ in range(3):
        [result] = scheduler.verify_slice()  # ceil(3 * 1h / 1d) = 1 image per run
        assert result.ok
        seen.append(result.image_id)
    assert sorted(seen) == sorted(cache.load_index().all_image_ids())
    # All verified once: the next slice takes the one verified longest ago.
    assert least_recently_verified(cache.load_index())[0] == seen[0]


def test_verify_failure_is_logged_as_an_event(tmp_path: Path, records) -> None:
    logger, handler = records
    config = make_config(tmp_path)
    cache = make_cache(config)
    index = cache.load_index()
    bad = index.newest(KERNELS[1])
    cache.store.image_path(bad).write_bytes(b"bit rot\n")
    results = []
    scheduler = MaintenanceScheduler(config, cache, logger=logger, on_verified=results.extend)
    scheduler.verify_slice()
    assert [r.image_id for r in results if not r.ok] == [bad]
    [record] = handler.events(Event.VERIFY_FAILED)
    assert getattr(record, FIELDS_ATTR)["BOOTWATCH_IMAGE_ID"] == bad
    assert cache.load_index().image_extra(bad)["verified"]["ok"] is False


@pytest.mark.slow
def test_a_failing_job_is_logged_and_the_others_keep_running(tmp_path: Path, records) -> None:
    logger, handler = records
    config = make_config(tmp_path)
    cache = make_cache(config)
    runs = Runs()

    def broken_rescan() -> None:
        raise RuntimeError("rescan exploded")

    scheduler = MaintenanceScheduler(config, cache, jobs={"rescan": broken_rescan}, on_job_done=runs,
                                     logger=logger)
    scheduler.start()
    try:
        assert wait_until(lambda: runs.failed["rescan"] >= 2 and runs.done["gc"] >= 2 and runs.done["clean"] >= 2)
    finally:
        assert scheduler.shutdown(10)
    failures = handler.events(Event.JOB_FAILED)
    assert len(failures) >= 2
    record = failures[0]
    assert getattr(record, FIELDS_ATTR)["BOOTWATCH_JOB"] == "rescan"
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert "broken_rescan" in logging.Formatter().formatException(record.exc_info)


@pytest.mark.slow
def test_shutdown_during_a_long_job_is_bounded(tmp_path: Path, records) -> None:
    logger, _ = records
    config = make_config(tmp_path, interval="1h")
    cache = make_cache(config)
    started, release = threading.Event(), threading.Event()

    def stubborn() -> None:  # ignores the stop request
        started.set()
        release.wait(120)

    scheduler = MaintenanceScheduler(config, cache, jobs={"rescan": stubborn}, logger=logger)
    scheduler.start()
    try:
        run_now(scheduler, "rescan")
        assert started.wait(30), "run_now did not run the job"
        assert scheduler.shutdown(0.5) is False
        # shutdown returned while the job was still running: it did not wait for it.
        assert job_threads() == ["bootwatch-job-rescan"]
        assert not release.is_set()
    finally:
        release.set()
    assert wait_until(lambda: job_threads() == [])


def test_shutdown_stops_a_cooperative_job(tmp_path: Path, records) -> None:
    logger, _ = records
    config = make_config(tmp_path, interval="1h")
    cache = make_cache(config)
    started = threading.Event()
    scheduler: MaintenanceScheduler

    def cooperative() -> None:
        started.set()
        scheduler.stopping.wait(120)

    scheduler = MaintenanceScheduler(config, cache, jobs={"rescan": cooperative}, logger=logger)
    scheduler.start()
    run_now(scheduler, "rescan")
    assert started.wait(30)
    assert scheduler.shutdown(60) is True
    assert wait_until(lambda: job_threads() == [])


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not Path("/dev/loop-control").exists() or not imagefactory.have("mkfs.ext4"),
                    reason="needs root, /dev/loop-control and mkfs.ext4 to loop-mount a filesystem image")
def test_verify_run_stops_at_its_bound_in_the_walk_of_a_filesystem_image(tmp_path: Path, records) -> None:
    """A verify run's bound reaches the content check: the walk of a real ext4 image with
    thousands of files gives up (recorded unchecked, without a time: first at the next run), and
    the run stops there and says so. The job's bound is at least a minute (its run period), so
    the run itself, verify_images, is given a small one here."""
    logger, handler = records
    config = make_config(tmp_path, verify="1d")
    cache = make_cache(config)
    tree = tmp_path / "tree"
    for n in range(20):
        (tree / f"d{n}").mkdir(parents=True)
        for m in range(100):
            (tree / f"d{n}" / f"f{m}").write_bytes(b"%d" % m * 100)
    imagefactory.build_ext4(cache.boot_dir / "rootfs.img", tree, size_mb=32)
    cache.add(["/rootfs.img"])
    cache.verify(KERNELS)  # the kernels were verified just now: the filesystem image comes first
    [fs_image] = [i for i in cache.load_index().all_image_ids() if cache.load_index().paths_of(i) == ["/rootfs.img"]]
    index = cache.load_index()
    ids = least_recently_verified(index)
    assert len(ids) == 4 and ids[0] == fs_image
    results = verify_images(cache, index, ids, 0.05, stopping=threading.Event(), logger=logger)
    [result] = cache.record_verifications(results)  # as verify_slice records them
    # Slowness is not corruption, and a walk cut off is no check either: unchecked.
    assert result.image_id == fs_image and (result.ok, result.unchecked, result.failed) == (False, True, False)
    [check] = result.checks
    assert (check.kind, check.outcome) == (ImageKind.FILESYSTEM, Outcome.INCOMPLETE) and "gave up" in check.message
    recorded = cache.load_index().image_extra(fs_image)["verified"]
    assert recorded == {"unchecked": True, "message": check.message, "checks": [check.to_json()]}
    assert least_recently_verified(cache.load_index())[0] == fs_image
    [warning] = [r for r in handler.records if "reached its bound" in r.getMessage()]
    assert "after 1 of 4 images" in warning.getMessage()


def waits_for_the_cache_lock(thread: threading.Thread) -> bool:
    """Whether ``thread`` is in the cache store's wait for the writers' lock (its stack says so)."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "_wait_for_lock":
            return True
        frame = frame.f_back
    return False


def test_a_clean_run_keeps_the_settings_it_started_with_across_a_reload(tmp_path: Path) -> None:
    """A reload while the clean job runs (it waits for the cache lock here) changes neither the
    run's keep nor its track policy: the run takes one snapshot of its settings at the start, the
    next run takes the new one. The worker does to the cache and the scheduler what a reload does."""
    config = make_config(tmp_path, keep=3)
    cache = make_cache(config)
    for n in range(2):  # three images of the first kernel
        (cache.boot_dir / KERNELS[0][1:]).write_bytes(f"kernel 0, build {n}\n".encode() * 1000)
        cache.add([KERNELS[0]])
    assert len(cache.load_index().images_newest_first(KERNELS[0])) == 3
    scheduler = MaintenanceScheduler(config, cache, jobs={"verify": None})
    lock = os.open(cache.store.directory / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run = threading.Thread(target=scheduler.clean)
        run.start()
        assert wait_until(lambda: waits_for_the_cache_lock(run)), "the clean run never waited for the lock"
        new = make_config(tmp_path, keep=1, name="reloaded.toml")
        cache.keep = new.cache.keep  # what the worker's reload does, on the same cache
        scheduler.reschedule(new)
    finally:
        os.close(lock)
    run.join(30)
    assert not run.is_alive()
    assert len(cache.load_index().images_newest_first(KERNELS[0])) == 3, "the run took half of the reload"
    scheduler.clean()  # the next run has the new settings
    assert len(cache.load_index().images_newest_first(KERNELS[0])) == 1
    assert scheduler.settings == JobSettings.of(new)
