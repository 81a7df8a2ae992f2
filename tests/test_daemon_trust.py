"""The daemon under pressure, as real child processes: a second daemon on the same cache, a lock
held by another process, I/O errors of the cache's file system, verification racing deletions."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from daemonproc import DaemonProcess, run_with_config, write_config
from polling import wait_for

BootTree = Any  # conftest.BootTree (the boot_tree fixture)


@pytest.fixture
def tree_with_kernel(boot_tree: BootTree) -> BootTree:
    boot_tree.write_kernel("1.0")
    boot_tree.write_entry("one", linux="/vmlinuz-1.0", initrd=["/initramfs-1.0.img"])
    return boot_tree


def config_for(tree: BootTree, name: str, runtime: str = "run", **sections: Any) -> Path:
    return write_config(tree.root / name, tree.boot, tree.cache, tree.root / runtime,
                        watch={"settle": "150ms"}, **sections)


# ------------------------------------------------------------------ two daemons on one cache

def test_second_daemon_on_the_same_cache_is_refused(tree_with_kernel: BootTree) -> None:
    tree = tree_with_kernel
    config = config_for(tree, "daemon.toml")
    # Another runtime directory (another status file) but the same cache: still refused.
    other_runtime = config_for(tree, "other.toml", runtime="run-other")
    (tree.root / "a").mkdir()
    (tree.root / "b").mkdir()
    (tree.root / "c").mkdir()
    with DaemonProcess(config, tree.root / "a") as first:
        first.wait_ready()
        for second_config, workdir in ((config, tree.root / "b"), (other_runtime, tree.root / "c")):
            with DaemonProcess(second_config, workdir) as second:
                assert second.proc.wait(60) == 1
                output = second.output()
                lines = output.splitlines()
                assert "Traceback" not in output
                assert len(lines) == 1, output
                assert f"PID {first.proc.pid} " in lines[0] and "another bootwatch daemon" in lines[0], output
                assert str(tree.cache) in lines[0]
                assert not any(m.get("READY") == "1" for m in second.messages)
            # The refused daemon has exited: the first is still the one that runs.
            result = run_with_config(config, "status", "--json")
            status = json.loads(result.stdout)
            assert result.returncode == 0 and status["running"] and status["pid"] == first.proc.pid, result
        assert first.proc.poll() is None
    # Once the first has stopped, a new daemon starts.
    (tree.root / "d").mkdir()
    with DaemonProcess(config, tree.root / "d") as again:
        again.wait_ready()


# ------------------------------------------------------------------ a lock held by someone else

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


def drain(daemon: DaemonProcess) -> None:
    while daemon.receive(0.01) is not None:
        pass


def test_lock_wait_names_the_holder_then_stops_feeding_the_watchdog(tree_with_kernel: BootTree) -> None:
    """A writer that keeps the cache lock: after the report bound STATUS and the log name its PID
    and command, after the stuck bound no WATCHDOG=1 is sent, and once it lets go all resumes."""
    tree = tree_with_kernel
    config = config_for(tree, "daemon.toml")
    # WatchdogSec=2s: pings every 1 s, the holder reported after 2 s, the wait stuck after 10 s.
    with DaemonProcess(config, tree.root, env={"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": ""}) as daemon:
        daemon.wait_ready()
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tree.cache / ".bootwatch.lock"),
                                   "holder-of-the-lock"], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            tree.write_kernel("2.0")
            tree.write_entry("two", linux="/vmlinuz-2.0")
            status = daemon.wait_message("STATUS", timeout=30)
            while f"PID {holder.pid} " not in status["STATUS"]:
                status = daemon.wait_message("STATUS", timeout=30)
            assert "holder-of-the-lock" in status["STATUS"] and "cache lock" in status["STATUS"], status
            assert "running since" in status["STATUS"]
            on_disk = json.loads((tree.root / "run" / "status.json").read_text())
            assert f"PID {holder.pid} " in on_disk["lock_wait"]
            shown = run_with_config(config, "status")
            assert f"PID {holder.pid} " in shown.stdout, shown.stdout
            log_lines = [line for line in daemon.output().splitlines() if "event=LOCK_WAIT" in line]
            assert len(log_lines) == 1 and f"holder_pid={holder.pid}" in log_lines[0], daemon.output()
            assert "holder-of-the-lock" in log_lines[0]
            # Still within the bound: the wait counts as progress.
            daemon.wait_message("WATCHDOG", "1", timeout=5)
            wait_for(lambda: "withholding the watchdog ping" in daemon.output(), timeout=30,
                     what="the watchdog withheld")
            drain(daemon)
            deadline = time.monotonic() + 3.5
            while time.monotonic() < deadline:
                message = daemon.receive(0.2)
                assert message is None or "WATCHDOG" not in message, message
            assert daemon.proc.poll() is None
        finally:
            holder.kill()
            holder.wait()
        # The holder is gone: the batch runs, the report is cleared, the watchdog is fed again.
        wait_for(lambda: "/vmlinuz-2.0" in json.loads(tree.index_file.read_text())["index"],
                 what="the waiting batch applied")
        daemon.wait_message("WATCHDOG", "1", timeout=10)
        wait_for(lambda: json.loads((tree.root / "run" / "status.json").read_text())["lock_wait"] is None,
                 what="the lock wait cleared from the status")
        assert "got the cache lock after waiting" in daemon.output()
        assert "Traceback" not in daemon.output()


# ------------------------------------------------------------------ verification racing a deletion

class DeletesAfterIndexRead:
    """The seam of verification: it reads the index without the lock, then hashes each image,
    then takes the lock to record. Right after that index read, this runs a real ``bootwatch``
    command (``remove``, ``clean``) to completion: the deletion every verify can meet, made
    deterministic."""

    def __init__(self, tree: BootTree, *argv: str) -> None:
        self.tree = tree
        self.argv = argv

    def wrap(self, cache: Any) -> Any:
        original = cache.load_index

        def load_index() -> Any:
            index = original()
            if self.argv:
                rc, out, err = self.tree.cli(*self.argv)
                assert rc == 0, (self.argv, out, err)
                self.argv = ()
            return index

        cache.load_index = load_index
        return cache


def verification_tree(tree: BootTree) -> Any:
    """Three cached kernels; the entry references a and b only, so clean drops c."""
    for name in ("a", "b", "c"):
        tree.write_file(f"/vmlinuz-{name}", 20_000)
    tree.write_entry("ab", linux="/vmlinuz-a", initrd=["/vmlinuz-b"])
    rc, out, err = tree.cli("add", "/vmlinuz-a", "/vmlinuz-b", "/vmlinuz-c")
    assert rc == 0, err
    return tree.library()


def image_of(tree: BootTree, path: str) -> str:
    return json.loads(tree.index_file.read_text())["index"][path][-1]


@pytest.mark.parametrize("deletion", [("remove", "--force", "/vmlinuz-b"), ("clean",)],
                         ids=["remove", "clean"])
def test_verify_job_does_not_report_images_deleted_meanwhile(boot_tree: BootTree,
                                                             deletion: tuple) -> None:
    from bootwatch.config import load_config
    from bootwatch.jobs import MaintenanceScheduler
    from bootwatch.journal import FIELDS_ATTR, Event

    tree = boot_tree
    cache = verification_tree(tree)
    gone = "/vmlinuz-b" if deletion[0] == "remove" else "/vmlinuz-c"
    gone_id = image_of(tree, gone)
    tree.config.write_text('[jobs]\nverify_interval = "1s"\n')  # every run verifies every image
    config = load_config(tree.config).with_overrides(boot=tree.boot, cache=tree.cache)
    records: list = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("test.verify.race")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    verified: list = []
    scheduler = MaintenanceScheduler(config, DeletesAfterIndexRead(tree, *deletion).wrap(cache),
                                     on_verified=verified.append, logger=logger)
    results = scheduler.verify_slice()
    assert not (tree.cache / f"{gone_id}.img").exists()  # the deletion did happen in between
    assert all(r.ok for r in results), results
    assert gone_id not in {r.image_id for r in results}
    assert verified == [results]  # what the metrics count: no failure
    failures = [r for r in records if getattr(r, FIELDS_ATTR, {}).get("MESSAGE_ID") == Event.VERIFY_FAILED.message_id]
    assert failures == []
    assert not [r for r in records if r.levelno >= logging.ERROR]
    listed = json.loads(tree.index_file.read_text())
    assert gone not in listed["index"] and gone_id not in listed["images"]


def test_verify_command_does_not_fail_on_an_image_removed_meanwhile(boot_tree: BootTree) -> None:
    tree = boot_tree
    cache = DeletesAfterIndexRead(tree, "remove", "--force", "/vmlinuz-b").wrap(verification_tree(tree))
    results = cache.verify()
    assert {r.ok for r in results} == {True}
    assert image_of(tree, "/vmlinuz-a") in {r.image_id for r in results}


def test_a_listed_image_that_is_missing_still_fails(boot_tree: BootTree) -> None:
    """The re-check drops only images that are gone by design: a listed image without its file is
    a real failure, reported at error priority."""
    tree = boot_tree
    verification_tree(tree)
    missing = image_of(tree, "/vmlinuz-a")
    (tree.cache / f"{missing}.img").unlink()
    rc, out, err = tree.cli("verify")
    assert rc == 1 and f"FAILED {missing}" in out and "image file is missing" in out, out
