"""The inotify watcher: changes as typed records, a real kernel queue overflow, re-arming."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess, write_config
from polling import wait_for

from bootwatch.daemon.watcher import EVENTS_LOST_EVENT, Change, ChangeKind, Watcher

BootTree = Any  # conftest.BootTree (the boot_tree fixture)

MAX_QUEUED_EVENTS = Path("/proc/sys/fs/inotify/max_queued_events")


def inotify_instances(pid: int) -> int:
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/{pid}/fd/{name}") == "anon_inode:inotify"
    return count


@contextlib.contextmanager
def small_inotify_queue(events: int) -> Iterator[None]:
    """The kernel's per-instance event queue limit, lowered for the instances made inside the
    block (the limit is read when an instance is created), and restored after it: the setting is
    the whole machine's, so the block is kept short."""
    if os.geteuid() != 0:
        pytest.skip("needs root (fs.inotify.max_queued_events)")
    saved = MAX_QUEUED_EVENTS.read_text()
    MAX_QUEUED_EVENTS.write_text(f"{events}\n")
    try:
        yield
    finally:
        MAX_QUEUED_EVENTS.write_text(saved)


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.skipif(EVENTS_LOST_EVENT is None, reason="this watchdog has no EventsLostEvent (before 7.1.1): "
                    "an overflow is repaired by the periodic rescan alone")
def test_a_real_queue_overflow_reaches_the_daemon_as_a_full_rescan(boot_tree: BootTree) -> None:
    """watchdog's EventsLostEvent for a real IN_Q_OVERFLOW makes the daemon reconcile everything:
    a kernel written during the flood, whose events may be among those lost, is cached."""
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_entry("one", linux="/vmlinuz-1.0", initrd=["/initramfs-1.0.img"])
    tree.write_entry("two", linux="/vmlinuz-2.0", initrd=["/initramfs-2.0.img"])  # its kernel comes later
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"})
    (tree.root / "w").mkdir()
    with small_inotify_queue(16):
        daemon = DaemonProcess(config, tree.root / "w")
        # Restored as soon as the daemon's watches are armed (its inotify instance exists).
        wait_for(lambda: inotify_instances(daemon.proc.pid) >= 1 or daemon.proc.poll() is not None,
                 timeout=30, what="the daemon's inotify instance")
    with daemon:
        daemon.wait_ready()
        # Thousands of events in one burst, far more than a queue of 16 holds while watchdog's
        # reader thread wakes up; none of these names is a boot path.
        subprocess.run(["touch", *(str(tree.boot / f"noise-{i}") for i in range(3000))], check=True)
        tree.write_kernel("2.0")
        subprocess.run(["touch", *(str(tree.boot / f"noise-{i}") for i in range(3000, 6000))], check=True)
        wait_for(lambda: "the inotify queue overflowed" in daemon.output(), timeout=30,
                 what="the overflow reported by the daemon")
        wait_for(lambda: "/vmlinuz-2.0" in json.loads(tree.index_file.read_text())["index"], timeout=30,
                 what="the kernel written during the flood cached")
        output = daemon.output()
    assert "reason=overflow" in output
    assert "Traceback" not in output


def test_changes_are_typed_and_a_replaced_directory_is_watched_again(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    changes: queue.Queue[Change] = queue.Queue()
    watcher = Watcher(boot, boot / "loader" / "entries", tmp_path / "cache", changes)
    watcher.start()
    try:
        assert not watcher.needs_rearm()
        (boot / "vmlinuz-1").write_bytes(b"k")
        kinds = set()
        while ChangeKind.CLOSED not in kinds:
            kinds.add(changes.get(timeout=5).kind)
        assert kinds <= {ChangeKind.CREATED, ChangeKind.CLOSED}
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
