"""``bootwatch run`` waits for a package manager's transaction before deciding about removed files.

Real daemons (tests/daemonproc.py) with real inotify; the transactions are real processes holding
a real lock (tests/lockholder.py), and a real ``dpkg -i`` stopped in its postinst.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess, run_with_config, write_config
from lockholder import BlockedDpkg, HeldLock
from polling import wait_for

pytestmark = pytest.mark.slow

BootTree = Any  # conftest.BootTree (the boot_tree fixture)

# Long enough for any of these tests: a wait that ends does so because the transaction ended.
NO_TIMEOUT = "1h"


@pytest.fixture
def tree(boot_tree: BootTree) -> BootTree:
    boot_tree.write_kernel("1.0")
    boot_tree.write_entry("one", linux="/vmlinuz-1.0", initrd=["/initramfs-1.0.img"])
    return boot_tree


def config_for(tree: BootTree, *, locks: Sequence[Path] = (), lock_files: Sequence[Path] = (),
               timeout: str = NO_TIMEOUT) -> Path:
    return write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                        watch={"settle": "150ms", "package_locks": [str(p) for p in locks], "package_pid_files": [],
                               "package_lock_files": [str(p) for p in lock_files], "transaction_timeout": timeout})


def wait_status(daemon: DaemonProcess, text: str, timeout: float = 30.0) -> str:
    """The next STATUS= that contains ``text``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        message = daemon.wait_message("STATUS", timeout=max(remaining, 0.1))
        if text in message["STATUS"]:
            return message["STATUS"]


def stays_missing(path: Path, seconds: float = 1.5) -> bool:
    """Whether ``path`` is still missing after ``seconds`` (several settle windows)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return False
        time.sleep(0.05)
    return not path.exists()


def test_a_kernel_removed_with_its_entry_during_a_dpkg_run_is_not_restored(tree: BootTree, tmp_path: Path) -> None:
    """As on Debian: dpkg removes the kernel, its postrm hook drops the entry later; the daemon waits
    for dpkg (its real lock, its PID named) and then finds the entry gone: nothing is restored."""
    kernel = tree.boot / "vmlinuz-1.0"
    with BlockedDpkg(tmp_path / "dpkg") as dpkg:
        wait_for(lambda: dpkg.locks_held() == 2, what="dpkg holding its locks")
        config = config_for(tree, locks=[dpkg.admin / "lock-frontend", dpkg.admin / "lock"])
        with DaemonProcess(config, tree.root) as daemon:
            daemon.wait_ready()
            kernel.unlink()
            (tree.boot / "initramfs-1.0.img").unlink()
            assert stays_missing(kernel)
            status = wait_status(daemon, "waiting for")
            assert f"waiting for dpkg (PID {dpkg.pid}) to finish before deciding on 2 removed files" in status
            on_disk = json.loads((tree.root / "run" / "status.json").read_text())
            assert f"dpkg (PID {dpkg.pid})" in on_disk["transaction_wait"]
            assert f"dpkg (PID {dpkg.pid})" in run_with_config(config, "status").stdout
            tree.remove_entry("one")  # the hook, still inside the transaction
            wait_status(daemon, "2 removed files and changed boot entries")
            assert dpkg.release() == 0
            wait_for(lambda: "finished after" in daemon.output(), what="the end of the wait logged")
            wait_status(daemon, "cached")  # the batch applied: the usual summary again
            assert not kernel.exists() and not (tree.boot / "initramfs-1.0.img").exists()
            output = daemon.output()
            assert "IMAGE_RESTORED" not in output
            assert f"waiting for dpkg (PID {dpkg.pid}) holding {dpkg.admin}/lock-frontend" in output
            assert "Traceback" not in output


def test_a_kernel_whose_entry_stays_is_restored_once_the_transaction_ends(tree: BootTree) -> None:
    kernel = tree.boot / "vmlinuz-1.0"
    lock = tree.root / "lock"
    with HeldLock(lock) as holder, DaemonProcess(config_for(tree, locks=[lock]), tree.root) as daemon:
        daemon.wait_ready()
        kernel.unlink()
        assert stays_missing(kernel)
        wait_status(daemon, f"(PID {holder.pid}) to finish before deciding on 1 removed file")
        holder.release()
        wait_for(kernel.exists, what="the kernel restored after the transaction")
        assert (tree.boot / ".vmlinuz-1.0.boomrestored").exists()
        wait_for(lambda: "IMAGE_RESTORED" in daemon.output(), what="the restore logged")
        assert "TRANSACTION_TIMEOUT" not in daemon.output()


def test_a_lock_held_past_the_bound_is_reported_and_the_kernel_restored(tree: BootTree) -> None:
    """A stuck transaction: after transaction_timeout the daemon logs TRANSACTION_TIMEOUT naming the
    lock and its holder, restores, and does not wait for the same transaction again."""
    kernel = tree.boot / "vmlinuz-1.0"
    lock = tree.root / "lock"
    with HeldLock(lock) as holder, \
            DaemonProcess(config_for(tree, locks=[lock], timeout="2s"), tree.root) as daemon:
        daemon.wait_ready()
        kernel.unlink()
        wait_for(kernel.exists, what="the kernel restored at the bound")
        [line] = [line for line in daemon.output().splitlines() if "event=TRANSACTION_TIMEOUT" in line]
        assert f"holder_pid={holder.pid}" in line and f"path={lock}" in line, line
        assert "longer than [watch] transaction_timeout" in line
        assert holder.proc.poll() is None  # the lock was never taken from its holder
        # The same transaction again: no second wait, the restore follows at once.
        wait_for(lambda: "IMAGE_RESTORED" in daemon.output(), what="the restore logged")
        kernel.unlink()
        wait_for(kernel.exists, timeout=10, what="the kernel restored again without a wait")
        assert daemon.output().count("event=TRANSACTION_TIMEOUT") == 1
        assert daemon.output().count("INFO waiting for") == 1


def test_a_stop_ends_the_wait_at_once_and_decides_nothing(tree: BootTree) -> None:
    kernel = tree.boot / "vmlinuz-1.0"
    lock = tree.root / "lock"
    with HeldLock(lock), DaemonProcess(config_for(tree, locks=[lock]), tree.root) as daemon:
        daemon.wait_ready()
        kernel.unlink()
        assert stays_missing(kernel, 0.5)
        wait_status(daemon, "waiting for")
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(10) == 0
        assert not kernel.exists()
        assert "stopping while waiting for" in daemon.output()


def test_a_reload_during_the_wait_is_answered_and_the_wait_goes_on(tree: BootTree) -> None:
    kernel = tree.boot / "vmlinuz-1.0"
    lock = tree.root / "lock"
    with HeldLock(lock) as holder, DaemonProcess(config_for(tree, locks=[lock]), tree.root) as daemon:
        daemon.wait_ready()
        kernel.unlink()
        assert stays_missing(kernel, 0.5)
        wait_status(daemon, "waiting for")
        daemon.signal(signal.SIGHUP)
        daemon.wait_message("RELOADING", "1", timeout=10)
        daemon.wait_ready(timeout=10)  # READY=1 while the transaction still runs
        assert stays_missing(kernel, 1.0)
        holder.release()
        wait_for(kernel.exists, what="the kernel restored after the transaction")


def test_pacmans_lock_file_holds_the_decision_until_it_is_removed(tree: BootTree) -> None:
    kernel = tree.boot / "vmlinuz-1.0"
    db_lck = tree.root / "db.lck"
    with DaemonProcess(config_for(tree, lock_files=[db_lck]), tree.root) as daemon:
        daemon.wait_ready()
        os.close(os.open(db_lck, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0))  # as pacman creates it
        kernel.unlink()
        assert stays_missing(kernel)
        status = wait_status(daemon, "waiting for")
        assert f"lock {db_lck}" in status
        db_lck.unlink()
        wait_for(kernel.exists, what="the kernel restored after pacman's lock file went")


def test_a_batch_without_removals_does_not_wait(tree: BootTree) -> None:
    """Only a batch that decides about removed files waits: a kernel rewritten in place is cached at once."""
    lock = tree.root / "lock"
    with HeldLock(lock), DaemonProcess(config_for(tree, locks=[lock]), tree.root) as daemon:
        daemon.wait_ready()
        new = tree.write_file("/vmlinuz-1.0", 5000)
        wait_for(lambda: new in json.loads(tree.index_file.read_text())["index"]["/vmlinuz-1.0"],
                 what="the new content cached")
        assert "waiting for" not in daemon.output()


def test_scan_never_waits_for_a_transaction(tree: BootTree) -> None:
    """The package managers' hooks run 'bootwatch scan' inside their transaction: it must not wait
    for it (that would deadlock until the bound)."""
    lock = tree.root / "lock"
    config = config_for(tree, locks=[lock])
    assert run_with_config(config, "scan").returncode == 0  # caches the kernel
    with HeldLock(lock):
        (tree.boot / "vmlinuz-1.0").unlink()
        done = run_with_config(config, "scan", timeout=60)
        assert done.returncode == 0, done.stderr
        assert (tree.boot / "vmlinuz-1.0").exists()


def test_a_daemon_started_during_a_transaction_restores_nothing_until_it_ends(tree: BootTree) -> None:
    """Restarted by a maintainer script inside the transaction: the start-up pass cannot wait (systemd
    waits for READY=1), so it restores nothing, and the full reconcile it queues waits."""
    kernel = tree.boot / "vmlinuz-1.0"
    lock = tree.root / "lock"
    config = config_for(tree, locks=[lock])
    assert run_with_config(config, "scan").returncode == 0  # cached
    with HeldLock(lock) as holder:
        kernel.unlink()  # removed by the transaction before the daemon starts
        with DaemonProcess(config, tree.root) as daemon:
            daemon.wait_ready()
            assert not kernel.exists()
            wait_status(daemon, f"(PID {holder.pid}) to finish before deciding on a full reconcile")
            assert stays_missing(kernel, 1.0)
            holder.release()
            wait_for(kernel.exists, what="the kernel restored once the transaction ended")
            assert "the start-up pass restores nothing" in daemon.output()
