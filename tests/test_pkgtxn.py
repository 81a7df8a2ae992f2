"""bootwatch.pkgtxn: a package manager's transaction seen in its lock files, held by real processes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lockholder import BlockedDpkg, HeldLock
from polling import wait_for

from bootwatch.pkgtxn import (
    KNOWN_LOCKS,
    LockKind,
    PackageLock,
    TransactionMonitor,
    default_paths,
    probe,
)


def record(path: Path) -> PackageLock:
    return PackageLock(path, LockKind.RECORD)


def lock_lines(path: Path) -> list[str]:
    """The lines of /proc/locks about ``path``'s inode."""
    inode = f":{path.stat().st_ino} "
    return [line for line in Path("/proc/locks").read_text().splitlines() if inode in line]


def test_an_unlocked_file_is_no_transaction_and_the_probe_takes_no_lock(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    assert probe(record(lock)).transaction is None
    assert lock_lines(lock) == []
    # A package manager can take it at once.
    with HeldLock(lock) as holder:
        assert probe(record(lock)).transaction is not None
        holder.release()


def test_a_process_associated_write_lock_is_a_transaction_with_its_holder(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with HeldLock(lock, "posix") as holder:
        found = probe(record(lock))
        assert found.problem is None and found.transaction is not None
        assert found.transaction.pid == holder.pid
        assert found.transaction.command is not None  # /proc/PID/comm
        assert found.transaction.identity == (lock.stat().st_dev, lock.stat().st_ino)
        assert f"(PID {holder.pid}) holding {lock}" in found.transaction.describe()
        holder.release()
    assert probe(record(lock)).transaction is None


def test_an_open_file_description_lock_is_a_transaction_and_its_holder_is_found(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with HeldLock(lock, "ofd") as holder:
        found = probe(record(lock)).transaction
        assert found is not None
        assert found.pid == holder.pid  # l_pid is -1 for OFD locks: found in /proc/PID/fdinfo
        holder.release()
    assert probe(record(lock)).transaction is None


def test_a_read_lock_is_a_reader_not_a_transaction(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with HeldLock(lock, "read"):
        assert probe(record(lock)) == probe(record(tmp_path / "missing"))
        assert probe(record(lock)).transaction is None


def test_a_missing_lock_file_is_no_transaction_and_no_problem(tmp_path: Path) -> None:
    for kind in LockKind:
        assert probe(PackageLock(tmp_path / "none", kind)).transaction is None
        assert probe(PackageLock(tmp_path / "none", kind)).problem is None
        assert probe(PackageLock(tmp_path / "file" / "below", kind)).problem is None


@pytest.mark.parametrize("kind", list(LockKind))
def test_a_fifo_in_place_of_a_lock_file_does_not_hang_and_is_a_problem_not_a_transaction(
        tmp_path: Path, kind: LockKind) -> None:
    fifo = tmp_path / "lock"
    os.mkfifo(fifo)
    # In a child, so that a hang fails the test instead of stopping the run.
    code = (f"from bootwatch.pkgtxn import probe, PackageLock, LockKind; from pathlib import Path; "
            f"r = probe(PackageLock(Path({str(fifo)!r}), LockKind({kind.value!r}))); "
            f"print(r.transaction is None, r.problem.reason)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True ") and "a FIFO" in done.stdout


@pytest.mark.parametrize("kind", list(LockKind))
def test_a_symlink_to_a_held_lock_is_not_followed(tmp_path: Path, kind: LockKind) -> None:
    target = tmp_path / "target"
    target.write_text(f"{os.getpid()}\n")
    link = tmp_path / "lock"
    link.symlink_to(target)
    with HeldLock(target):
        found = probe(PackageLock(link, kind))
        assert found.transaction is None
        assert found.problem is not None and "symbolic link" in found.problem.reason


def test_the_real_dpkg_holds_its_locks_for_its_whole_run(tmp_path: Path) -> None:
    """dpkg -i stopped in its postinst: both of its lock files show the transaction, with dpkg's PID."""
    with BlockedDpkg(tmp_path) as dpkg:
        wait_for(lambda: dpkg.locks_held() == 2 or dpkg.proc.poll() is not None, what="dpkg holding its locks")
        for name in ("lock-frontend", "lock"):
            found = probe(record(dpkg.admin / name)).transaction
            assert found is not None, name
            assert found.pid == dpkg.pid and found.command == "dpkg"
            assert found.holder() == f"dpkg (PID {dpkg.pid})"
        assert dpkg.release() == 0
        for name in ("lock-frontend", "lock"):
            assert probe(record(dpkg.admin / name)).transaction is None


def test_a_pid_file_is_a_transaction_while_its_process_lives(tmp_path: Path) -> None:
    pid_file = PackageLock(tmp_path / "rpmdb_lock.pid", LockKind.PID_FILE)
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        pid_file.path.write_text(str(child.pid))  # as dnf 4 writes it: the digits, no newline
        found = probe(pid_file).transaction
        assert found is not None and found.pid == child.pid
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert probe(pid_file).transaction is None and probe(pid_file).problem is None  # a dead process
    pid_file.path.write_text("")
    assert probe(pid_file).transaction is None and probe(pid_file).problem is None
    pid_file.path.write_text("dnf\n")
    assert probe(pid_file).transaction is None
    problem = probe(pid_file).problem
    assert problem is not None and "no PID" in problem.reason


def test_a_zombie_holds_no_transaction(tmp_path: Path) -> None:
    pid_file = PackageLock(tmp_path / "zypp.pid", LockKind.PID_FILE)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1].startswith("Z"),
                 what="the child a zombie")
        pid_file.path.write_text(f"{child.pid}\n")
        assert probe(pid_file).transaction is None
    finally:
        child.wait()


def test_pacmans_lock_file_is_a_transaction_while_it_exists(tmp_path: Path) -> None:
    db_lck = PackageLock(tmp_path / "db.lck", LockKind.LOCK_FILE)
    assert probe(db_lck).transaction is None
    # As pacman creates it: O_CREAT|O_EXCL, mode 0000, no lock.
    os.close(os.open(db_lck.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0))
    found = probe(db_lck).transaction
    assert found is not None and found.pid is None
    assert found.describe() == f"a package manager ({db_lck.path} exists)"
    db_lck.path.unlink()
    assert probe(db_lck).transaction is None


def test_the_monitor_warns_once_per_problem_and_again_after_it_was_fine(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    fifo = tmp_path / "lock"
    os.mkfifo(fifo)
    monitor = TransactionMonitor([record(fifo)])
    with caplog.at_level(logging.WARNING, logger="bootwatch.pkgtxn"):
        for _ in range(3):
            assert monitor.current() is None
        assert len(caplog.records) == 1 and str(fifo) in caplog.records[0].getMessage()
        fifo.unlink()
        assert monitor.current() is None
        os.mkfifo(fifo)
        assert monitor.current() is None
        assert len(caplog.records) == 2


def test_the_monitor_returns_the_first_transaction_in_order(tmp_path: Path) -> None:
    first, second = tmp_path / "lock-frontend", tmp_path / "lock"
    with HeldLock(second) as holder:
        monitor = TransactionMonitor([record(first), record(second)])
        found = monitor.current()
        assert found is not None and found.lock.path == second and found.pid == holder.pid


def test_a_transaction_given_up_on_is_not_waited_for_again_until_released(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    monitor = TransactionMonitor([record(lock)])
    with HeldLock(lock) as holder:
        found = monitor.current()
        assert found is not None
        monitor.give_up(found)
        assert monitor.current() is None  # the same lock, the same holder: ignored
        holder.release()
    assert monitor.current() is None  # seen released: forgotten
    with HeldLock(lock) as again:
        found = monitor.current()
        assert found is not None and found.pid == again.pid  # a new transaction counts


def test_a_given_up_lock_file_counts_again_once_it_was_gone(tmp_path: Path) -> None:
    db_lck = tmp_path / "db.lck"
    monitor = TransactionMonitor([PackageLock(db_lck, LockKind.LOCK_FILE)])
    db_lck.touch()
    found = monitor.current()
    assert found is not None
    monitor.give_up(found)
    assert monitor.current() is None
    db_lck.unlink()
    assert monitor.current() is None
    db_lck.touch()
    assert monitor.current() is not None


def test_the_defaults_are_the_known_lock_files() -> None:
    assert default_paths(LockKind.RECORD)[:2] == ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock")
    assert default_paths(LockKind.LOCK_FILE) == ("/var/lib/pacman/db.lck",)
    assert len({path for path, _, _ in KNOWN_LOCKS}) == len(KNOWN_LOCKS)
    assert PackageLock(Path("/var/lib/pacman/db.lck"), LockKind.LOCK_FILE).manager == "pacman"


def test_probing_a_held_lock_leaves_it_held(tmp_path: Path) -> None:
    """The probe asks; it neither waits for the lock nor disturbs its holder."""
    lock = tmp_path / "lock"
    with HeldLock(lock) as holder:
        for _ in range(20):
            assert probe(record(lock)).transaction is not None
        assert [line.split()[4] for line in lock_lines(lock)] == [str(holder.pid)]
