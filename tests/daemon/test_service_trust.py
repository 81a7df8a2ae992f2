"""The daemon under pressure, as real child processes: a second daemon on the same cache, a lock
held by another process, I/O errors of the cache's file system, verification racing deletions."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess, run_with_config, write_config
from polling import wait_for

pytestmark = pytest.mark.slow

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


def test_a_lock_wait_on_the_daemons_own_job_keeps_feeding_the_watchdog(tree_with_kernel: BootTree) -> None:
    """The worker waits past the stuck bound for the lock that a job thread of the same daemon
    holds (a long clean of a huge cache): that is the daemon's own work, so the watchdog is fed
    (a restart would only kill the job); the wait is still reported, naming the job."""
    from bootwatch.cache.session import open_cache
    from bootwatch.daemon.notify import SystemdNotifier
    from bootwatch.daemon.service import Daemon

    tree = tree_with_kernel
    daemon = Daemon(config_for(tree, "daemon.toml"))
    # WatchdogSec=2s: the holder is reported after 2 s, a wait is stuck after 10 s.
    daemon.notifier = SystemdNotifier({"WATCHDOG_USEC": "2000000"})
    daemon.cache = open_cache(daemon.config)
    job_holds, job_done = threading.Event(), threading.Event()

    def job() -> None:  # the lock held the way the clean job holds it, in a thread of this process
        with daemon.cache.transaction():
            job_holds.set()
            job_done.wait(60)

    def batch() -> None:
        with daemon.cache.transaction(waiter=daemon.lock_wait):
            pass

    job_thread = threading.Thread(target=job, daemon=True)
    daemon.worker = threading.Thread(target=batch, daemon=True)
    daemon.watcher.start()
    try:
        job_thread.start()
        assert job_holds.wait(30)
        daemon.worker.start()
        wait_for(lambda: (daemon.lock_wait.waited() or 0) > daemon._stuck_after() + 1, timeout=60,
                 what="a wait past the stuck bound")
        assert daemon._healthy()
        assert daemon.status.lock_wait is not None and "own maintenance job" in daemon.status.lock_wait
    finally:
        job_done.set()
        job_thread.join(30)
        daemon.worker.join(30)
        daemon.watcher.stop()
        daemon.cache.store.close()
    assert daemon.lock_wait.waited() is None  # the batch got the lock


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
    from bootwatch.daemon.jobs import MaintenanceScheduler
    from bootwatch.log import FIELDS_ATTR, Event

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
    assert rc == 1 and f"FAILED {missing[:12]}" in out and "image file is missing" in out, out


# ------------------------------------------------------------------ a full, read-only cache

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount file systems")


@contextlib.contextmanager
def mounted(directory: Path, *mount_args: str) -> Iterator[Path]:
    directory.mkdir(mode=0o700, exist_ok=True)
    subprocess.run(["mount", *mount_args, str(directory)], check=True, capture_output=True)
    try:
        os.chmod(directory, 0o700)  # a new file system's root is 0755 (ext4) or 1777 (tmpfs)
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)


@contextlib.contextmanager
def ext4_cache(tree: BootTree) -> Iterator[Path]:
    image = tree.root / "cache.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image), "16M"], check=True, capture_output=True)
    with mounted(tree.cache, "-o", "loop", str(image)) as directory:
        yield directory


def remount(directory: Path, mode: str) -> None:
    """``mount -o remount,ro|rw``; a writer that has a file open for writing makes it EBUSY for a
    moment (the daemon's lock file during a batch, a job): try again."""
    deadline = time.monotonic() + 30
    while True:
        result = subprocess.run(["mount", "-o", f"remount,{mode}", str(directory)], capture_output=True, text=True)
        if result.returncode == 0:
            return
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.1)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte with one file, and return it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (1 << 16, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def io_error_lines(output: str) -> list:
    return [line for line in output.splitlines() if "event=IO_ERROR" in line]


def indexed(tree: BootTree) -> dict:
    return json.loads(tree.index_file.read_text())["index"]


@needs_root
def test_read_only_cache_under_the_daemon(tree_with_kernel: BootTree) -> None:
    """EROFS under a running daemon: degraded, one line, restores go on; writable again: it
    catches up and says so."""
    tree = tree_with_kernel
    with ext4_cache(tree):
        config = config_for(tree, "daemon.toml")
        with DaemonProcess(config, tree.root) as daemon:
            daemon.wait_ready()
            kernel = tree.boot / "vmlinuz-1.0"
            image_id = tree.sha1_of(kernel)
            remount(tree.cache, "ro")
            kernel.unlink()
            wait_for(kernel.exists, what="the kernel restored from the read-only cache")
            assert tree.sha1_of(kernel) == image_id
            status = daemon.wait_message("STATUS", timeout=10)
            while "read-only" not in status["STATUS"]:
                status = daemon.wait_message("STATUS", timeout=10)
            for version in ("2.0", "3.0"):  # cannot be cached: said once, not per path or batch
                tree.write_kernel(version)
                tree.write_entry(version, linux=f"/vmlinuz-{version}")
                time.sleep(1.0)
            (tree.boot / "initramfs-1.0.img").unlink()
            wait_for((tree.boot / "initramfs-1.0.img").exists, what="the initramfs restored")
            output = daemon.output()
            assert "Traceback" not in output
            lines = io_error_lines(output)
            assert len(lines) == 1 and "errno=EROFS" in lines[0] and str(tree.cache) in lines[0], output
            assert "/vmlinuz-2.0" not in indexed(tree)

            remount(tree.cache, "rw")
            tree.write_entry("again", linux="/vmlinuz-1.0")  # any change: the next batch catches up
            wait_for(lambda: {"/vmlinuz-2.0", "/vmlinuz-3.0"} <= indexed(tree).keys(), timeout=30,
                     what="the kernels cached once the cache is writable")
            wait_for(lambda: "the cache is writable again" in daemon.output(), what="the recovery said")
            wait_for(lambda: json.loads((tree.root / "run" / "status.json").read_text())["degraded"] is None,
                     what="the status no longer degraded")
            assert "Traceback" not in daemon.output()
            assert len(io_error_lines(daemon.output())) == 1


@needs_root
def test_daemon_starts_on_a_read_only_cache(tree_with_kernel: BootTree) -> None:
    tree = tree_with_kernel
    with ext4_cache(tree):
        rc, out, err = tree.cli("add", "/vmlinuz-1.0", "/initramfs-1.0.img")
        assert rc == 0, err
        remount(tree.cache, "ro")
        # The command line: one line naming the cache and the errno; a restore still works.
        tree.write_file("/vmlinuz-9", 1000)
        rc, out, err = tree.cli("add", "/vmlinuz-9")
        assert rc == 1 and "Traceback" not in err
        assert err.splitlines()[0].startswith(f"bootwatch: {tree.cache}: ") and "(EROFS)" in err, err
        (tree.boot / "initramfs-1.0.img").unlink()
        rc, out, err = tree.cli("restore", "/initramfs-1.0.img")
        assert rc == 0, err
        config = config_for(tree, "daemon.toml")
        with DaemonProcess(config, tree.root) as daemon:
            ready = daemon.wait_ready()
            assert "read-only" in ready["STATUS"], ready
            kernel = tree.boot / "vmlinuz-1.0"
            kernel.unlink()
            wait_for(kernel.exists, what="the kernel restored by a daemon started on a read-only cache")
            assert daemon.proc.poll() is None
            assert "Traceback" not in daemon.output()


@needs_root
def test_full_cache_under_the_daemon(tree_with_kernel: BootTree) -> None:
    """ENOSPC: one line per file and errno however many batches fail, restores go on, and the
    daemon catches up once there is space again."""
    tree = tree_with_kernel
    with mounted(tree.cache, "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs"):
        config = config_for(tree, "daemon.toml")
        with DaemonProcess(config, tree.root) as daemon:
            daemon.wait_ready()
            filler = fill(tree.cache)
            for version in ("2.0", "3.0", "4.0"):
                tree.write_kernel(version, size=200_000)
                tree.write_entry(version, linux=f"/vmlinuz-{version}")
                time.sleep(1.0)
            kernel = tree.boot / "vmlinuz-1.0"
            image_id = tree.sha1_of(kernel)
            kernel.unlink()
            wait_for(kernel.exists, what="the kernel restored while the cache is full")
            assert tree.sha1_of(kernel) == image_id
            time.sleep(2.0)
            output = daemon.output()
            assert "Traceback" not in output
            lines = io_error_lines(output)
            keys = [(line.split("path=")[1].split()[0], line.split("errno=")[1].split()[0].rstrip(")"))
                    for line in lines]
            assert lines and len(keys) == len(set(keys)), output
            assert {errno for _, errno in keys} == {"ENOSPC"}, output
            assert daemon.proc.poll() is None

            filler.unlink()
            tree.write_entry("again", linux="/vmlinuz-1.0")
            wait_for(lambda: {"/vmlinuz-2.0", "/vmlinuz-3.0", "/vmlinuz-4.0"} <= indexed(tree).keys(),
                     timeout=30, what="the kernels cached once there is space")
            wait_for(lambda: "I/O errors of" in daemon.output() and "are over" in daemon.output(),
                     what="the recovery said")
            assert "Traceback" not in daemon.output()


@needs_root
def test_clean_frees_space_on_a_full_cache(boot_tree: BootTree) -> None:
    """The cache's file system is full to the last byte, mostly with an image no index lists:
    clean deletes that first, then has room to write the index that drops the unreferenced one."""
    tree = boot_tree
    with mounted(tree.cache, "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"):
        tree.write_file("/vmlinuz-kept", 100_000)
        tree.write_file("/vmlinuz-old", 100_000)
        tree.write_entry("kept", linux="/vmlinuz-kept")
        rc, out, err = tree.cli("add", "/vmlinuz-kept", "/vmlinuz-old")
        assert rc == 0, err
        old_id = indexed(tree)["/vmlinuz-old"][-1]
        # An orphan that fills the file system (a complete image a failed write left unlisted).
        filler = fill(tree.cache)
        orphan_id = tree.sha1_of(filler)
        os.rename(filler, tree.cache / f"{orphan_id}.img")
        assert os.statvfs(tree.cache).f_bavail == 0
        rc, out, err = tree.cli("clean")
        assert rc == 0 and "Traceback" not in err, out + err
        assert not (tree.cache / f"{orphan_id}.img").exists()
        assert not (tree.cache / f"{old_id}.img").exists()
        assert list(indexed(tree)) == ["/vmlinuz-kept"]
        assert tree.cli("fsck")[0] == 0


# ------------------------------------------------------------------ the journal, whatever the command

def test_scan_logs_its_restores_to_the_journal_too(boot_tree: BootTree, tmp_path: Path) -> None:
    """A real datagram socket stands in for journald's: what a command line scan restores reaches
    it as a native record (MESSAGE_ID, BOOTWATCH_COMMAND=scan); stderr stays as quiet as asked."""
    import io
    import socket

    from journalentry import parse_entry

    from bootwatch.cache.session import open_cache, reconcile_once
    from bootwatch.config import load_config
    from bootwatch.log import Event, setup_cli_logging

    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_entry("one", linux="/vmlinuz-1.0", initrd=["/initramfs-1.0.img"])
    assert tree.cli("scan", "--quiet")[0] == 0
    (tree.boot / "vmlinuz-1.0").unlink()
    journal_path = tmp_path / "journal.socket"
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(journal_path))
    journal.settimeout(5)
    stderr = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        setup_cli_logging("warning", "scan", stream=stderr, environ={}, journal_socket=journal_path)
        config = load_config(tree.config).with_overrides(boot=tree.boot, cache=tree.cache)
        report = reconcile_once(config, open_cache(config))
        assert report.restored == ["/vmlinuz-1.0"]
        records = []
        journal.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                records.append(dict(parse_entry(journal.recv(65536))))
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
                handler.close()
        logging.getLogger("bootwatch").setLevel(logging.NOTSET)
        journal.close()
    restored = [r for r in records if r.get("MESSAGE_ID") == Event.IMAGE_RESTORED.message_id.encode()]
    assert len(restored) == 1, records
    assert restored[0]["BOOTWATCH_COMMAND"] == b"scan" and restored[0]["BOOTWATCH_PATH"] == b"/vmlinuz-1.0"
    assert restored[0]["SYSLOG_IDENTIFIER"] == b"bootwatch"
    assert stderr.getvalue() == ""  # --quiet: the restore is in the journal, not on the terminal


# ---------------------------------------------------------------- a stop during a wait for the lock


def small_tree(tmp_path: Path, **jobs: str) -> Path:
    """One kernel and one entry, and a configuration with a short settle window (and ``jobs``)."""
    boot, cache, run = tmp_path / "boot", tmp_path / "cache", tmp_path / "run"
    (boot / "loader" / "entries").mkdir(parents=True)
    (boot / "vmlinuz-1").write_bytes(os.urandom(8192))
    (boot / "loader" / "entries" / "one.conf").write_text("title one\nversion 1\nlinux /vmlinuz-1\n")
    os.chmod(tmp_path, 0o755)
    return write_config(tmp_path / "cfg.toml", boot, cache, run, watch={"settle": "100ms"},
                        **({"jobs": jobs} if jobs else {}))


@contextlib.contextmanager
def cache_lock_held(cache: Path) -> Iterator[None]:
    """The writers' lock, held by this (test) process."""
    fd = os.open(cache / ".bootwatch.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def seconds_to_stop(daemon: DaemonProcess) -> float:
    start = time.monotonic()
    daemon.signal(15)
    with contextlib.suppress(subprocess.TimeoutExpired):
        daemon.proc.wait(timeout=30)
    return time.monotonic() - start


def test_sigterm_while_the_first_reconcile_waits_for_the_lock_stops_within_seconds(tmp_path: Path) -> None:
    """Before READY=1 the start-up reconcile waits for a lock another process holds; SIGTERM
    ends the wait (TimeoutStopSec=15s must never be reached)."""
    config = small_tree(tmp_path)
    assert run_with_config(config, "scan").returncode == 0
    (tmp_path / "boot" / "vmlinuz-1").write_bytes(os.urandom(8192))  # something to do under the lock
    with cache_lock_held(tmp_path / "cache"), DaemonProcess(config, tmp_path) as daemon:
        time.sleep(3)  # started, waiting for the lock in the first reconcile
        took = seconds_to_stop(daemon)
        assert daemon.proc.returncode == 0, daemon.output()[-2000:]
    assert took < 5, f"SIGTERM took {took:.0f} s while the lock was held"


def test_sigterm_while_a_batch_waits_for_the_lock_stops_within_seconds(tmp_path: Path) -> None:
    """After READY, a batch waits for the lock another process holds: SIGTERM ends the wait, and
    nothing is said about the lock after "stopping"."""
    config = small_tree(tmp_path)
    with DaemonProcess(config, tmp_path) as daemon:
        daemon.wait_ready()
        with cache_lock_held(tmp_path / "cache"):
            (tmp_path / "boot" / "vmlinuz-1").write_bytes(os.urandom(8192))
            time.sleep(2)
            took = seconds_to_stop(daemon)
        output = daemon.output()
    assert took < 5, f"SIGTERM took {took:.0f} s while a batch waited for the lock"
    assert "cache lock" not in output.split("stopping")[-1], output[-2000:]


def test_sigterm_with_a_job_and_a_batch_waiting_for_the_lock_beats_timeoutstopsec(tmp_path: Path) -> None:
    """The clean and gc jobs and a batch all wait for the lock: SIGTERM ends every wait."""
    config = small_tree(tmp_path, clean_interval="1s", gc_interval="1s")
    with DaemonProcess(config, tmp_path) as daemon:
        daemon.wait_ready()
        with cache_lock_held(tmp_path / "cache"):
            (tmp_path / "boot" / "vmlinuz-1").write_bytes(os.urandom(8192))
            time.sleep(3)  # a batch and the jobs now wait for the lock
            took = seconds_to_stop(daemon)
        output = daemon.output()
    assert took < 5, f"SIGTERM took {took:.1f} s (TimeoutStopSec=15s)"
    assert "abandoned" not in output and "Traceback" not in output, output[-2000:]


def test_jobs_on_a_corrupt_index_log_one_line_not_a_traceback(tmp_path: Path) -> None:
    """The clean and verify jobs on a corrupt index: one line each (not one per run), no traceback."""
    config = small_tree(tmp_path, clean_interval="1s", verify_interval="1s")
    assert run_with_config(config, "scan").returncode == 0
    (tmp_path / "cache" / "cacheindex.json").write_text('{"index": 5}')
    with DaemonProcess(config, tmp_path) as daemon:
        daemon.wait_ready()
        wait_for(lambda: "job clean failed" in daemon.output() and "job verify failed" in daemon.output(),
                 timeout=30)
        time.sleep(4)  # several more runs of each job
        daemon.stop()
        output = daemon.output()
    assert "Traceback" not in output, output[-2000:]
    for job in ("clean", "verify"):
        lines = [line for line in output.splitlines() if f"job {job} failed" in line]
        assert len(lines) == 1, lines
        assert "cacheindex.json" in lines[0], lines


def test_a_replaced_cache_directory_does_not_leave_two_daemons(tmp_path: Path) -> None:
    """The cache directory removed and made again under the running daemon: the daemon exits
    with a failure (systemd restarts it on the new directory), never works on a directory it did
    not check, and a second daemon started meanwhile keeps its status file."""
    config = small_tree(tmp_path)
    cache = tmp_path / "cache"
    (tmp_path / "a").mkdir()
    with DaemonProcess(config, tmp_path / "a") as first:
        first.wait_ready()
        subprocess.run(["rm", "-rf", str(cache)], check=True)
        time.sleep(1)
        cache.mkdir(mode=0o700, exist_ok=True)
        time.sleep(2)
        (tmp_path / "b").mkdir()
        with DaemonProcess(config, tmp_path / "b") as second:
            time.sleep(5)
            both_up = first.proc.poll() is None and second.proc.poll() is None
            assert first.proc.poll() == 1, first.output()[-2000:]
            second.wait_ready()
            assert run_with_config(config, "status").returncode == 0  # the second's status file is kept
            second.stop()
        status = run_with_config(config, "status")
        output = first.output()
    assert not both_up, "two daemons ran on one cache path"
    assert status.returncode != 0, status.stdout  # nothing runs
    assert output.count("event=CACHE_DIRECTORY_REPLACED") == 1, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
