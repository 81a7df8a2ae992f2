"""The maintenance jobs inside a real ``bootwatch run``, with intervals of seconds.

What the jobs did is read from the daemon's node_exporter textfile (the same file an operator's
Prometheus scrapes) and from its log, never from inside the process.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess, write_config
from polling import wait_for

pytestmark = pytest.mark.slow

BootTree = Any  # the boot_tree fixture of conftest


def job_runs(textfile: Path) -> dict[str, float]:
    try:
        text = textfile.read_text()
    except FileNotFoundError:
        return {}
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^bootwatch_job_runs_total\{job="(\w+)"\} (\S+)$', text, re.M)}


def fast_jobs_config(tree: BootTree, textfile: Path) -> Path:
    return write_config(tree.root / "jobs.toml", tree.boot, tree.cache, tree.root / "run",
                        watch={"settle": "100ms", "rescan_interval": "1s"},
                        jobs={"clean_interval": "1s", "gc_interval": "1s", "verify_interval": "2s"},
                        metrics={"textfile": str(textfile)})


def test_jobs_run_on_schedule_and_failures_do_not_kill_the_daemon(boot_tree: BootTree) -> None:
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_entry("one", linux="/vmlinuz-1.0", initrd=["/initramfs-1.0.img"])
    textfile = tree.root / "metrics" / "bootwatch.prom"
    textfile.parent.mkdir()
    config = fast_jobs_config(tree, textfile)
    with DaemonProcess(config, tree.root) as daemon:
        daemon.wait_ready()
        wait_for(lambda: all(job_runs(textfile).get(j, 0) >= 2 for j in ("clean", "gc", "verify", "rescan")),
                 timeout=60, what=f"every job run twice (so far {job_runs(textfile)})")
        # Verification results reach the index (the verify job uses the library's verify).
        rc, out, err = tree.cli("list")
        assert rc == 0 and "never" not in out, out
        # Break the index: every job that reads it now fails; the daemon logs that and lives on.
        tree.index_file.write_text("{ this is not json")
        wait_for(lambda: "JOB_FAILED" in daemon.output(), timeout=30, what="a failed job logged")
        before = job_runs(textfile).get("gc", 0)
        wait_for(lambda: job_runs(textfile).get("gc", 0) > before, timeout=30, what="jobs still running")
        assert daemon.proc.poll() is None
        # Repair it: the daemon recovers by itself.
        rc, out, err = tree.cli("fsck", "--repair")
        assert rc == 0, out + err
        os.unlink(tree.boot / "vmlinuz-1.0")
        wait_for((tree.boot / "vmlinuz-1.0").exists, timeout=30, what="a restore after the repair")


def test_sigterm_during_a_verify_job_stops_within_the_bound(boot_tree: BootTree) -> None:
    tree = boot_tree
    # Big enough that hashing them takes a while: the SIGTERM arrives during the job.
    for n in range(3):
        path = tree.boot / f"vmlinuz-big{n}"
        with open(path, "wb") as f:
            for _ in range(128):
                f.write(os.urandom(1 << 20))
        tree.write_entry(f"big{n}", linux=f"/vmlinuz-big{n}")
    textfile = tree.root / "metrics" / "bootwatch.prom"
    textfile.parent.mkdir()
    with DaemonProcess(fast_jobs_config(tree, textfile), tree.root) as daemon:
        daemon.wait_ready(timeout=120)
        wait_for(lambda: job_runs(textfile).get("verify", 0) >= 1, timeout=60, what="a first verify run")
        time.sleep(0.3)
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        daemon.wait_message("STOPPING", "1")
        assert daemon.proc.wait(30) == 0
        # The bound is the scheduler's 5 s shutdown plus the worker's; far below systemd's 15 s stop timeout.
        assert time.monotonic() - started < 15


def test_reload_keeps_the_jobs_running(boot_tree: BootTree) -> None:
    """SIGHUP with new intervals reschedules the jobs of the same cache; they keep running."""
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_entry("one", linux="/vmlinuz-1.0")
    textfile = tree.root / "metrics" / "bootwatch.prom"
    textfile.parent.mkdir()
    config = fast_jobs_config(tree, textfile)
    with DaemonProcess(config, tree.root) as daemon:
        daemon.wait_ready()
        wait_for(lambda: job_runs(textfile).get("gc", 0) >= 1, timeout=30, what="a first gc run")
        config.write_text(config.read_text().replace('gc_interval = "1s"', 'gc_interval = "2s"'))
        daemon.signal(signal.SIGHUP)
        daemon.wait_message("RELOADING", "1")
        daemon.wait_ready()
        before = job_runs(textfile).get("gc", 0)
        wait_for(lambda: job_runs(textfile).get("gc", 0) >= before + 2, timeout=30, what="gc running after reload")
        assert "JOB_FAILED" not in daemon.output()
