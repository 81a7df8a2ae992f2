"""The daemon under pressure, as real child processes: a second daemon on the same cache, a lock
held by another process, I/O errors of the cache's file system, verification racing deletions."""

from __future__ import annotations

import json
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
