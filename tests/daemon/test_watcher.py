"""The inotify watcher: overflow detection is tied to watchdog's own warning, so check that tie."""

from __future__ import annotations

import inspect
import logging
import os
import queue
from pathlib import Path

import watchdog.observers.inotify_c as inotify_c

from bootwatch.daemon.watcher import OVERFLOW_LOGGER, OVERFLOW_TEXT, Change, Watcher


def test_installed_watchdog_still_logs_the_overflow_we_listen_for() -> None:
    """watchdog delivers no event on IN_Q_OVERFLOW, only this warning: if it is reworded, we go deaf."""
    assert inotify_c.__name__ == OVERFLOW_LOGGER
    source = inspect.getsource(inotify_c).lower()
    assert "in_q_overflow" in source and OVERFLOW_TEXT in source


def test_overflow_warning_queues_a_reconcile(tmp_path: Path) -> None:
    changes: queue.Queue[Change] = queue.Queue()
    watcher = Watcher(tmp_path, tmp_path / "entries", tmp_path / "cache", changes)
    watcher.start()
    try:
        logging.getLogger(OVERFLOW_LOGGER).warning("Inotify queue overflowed; filesystem events were lost")
        assert changes.get(timeout=5).kind == "overflow"
    finally:
        watcher.stop()


def test_replaced_directory_needs_rearm_and_new_files_are_seen(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    changes: queue.Queue[Change] = queue.Queue()
    watcher = Watcher(boot, boot / "loader" / "entries", tmp_path / "cache", changes)
    watcher.start()
    try:
        assert not watcher.needs_rearm()
        (boot / "vmlinuz-1").write_bytes(b"k")
        kinds = set()
        while "closed" not in kinds:
            kinds.add(changes.get(timeout=5).kind)
        # Replace the directory (as a remount would): the old watch sees nothing of the new one.
        os.rename(boot, tmp_path / "boot.old")
        boot.mkdir()
        assert watcher.needs_rearm()
        watcher.rearm()
        assert not watcher.needs_rearm()
        (boot / "vmlinuz-2").write_bytes(b"k")
        seen = []
        while not any(c.path.endswith("vmlinuz-2") for c in seen):
            seen.append(changes.get(timeout=5))
    finally:
        watcher.stop()
