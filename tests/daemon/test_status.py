"""``bootwatch status``: liveness is the daemon lock on the cache directory, status.json is untrusted.

Real child processes: the daemon lock is held by a real process with flock(2) on the cache
directory (what store.CacheStore.hold_daemon_lock takes), stale and hostile status files are real
files and FIFOs, and the processes a stale PID may now name are real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonproc import run_with_config, write_config

HOSTILE = {
    "a list": "[1]",
    "started a string": '{"pid": PID, "started": "x", "boot_dir": "/boot", "cache_dir": "/c"}',
    "started 1e300": '{"pid": PID, "started": 1e300, "boot_dir": "/boot", "cache_dir": "/c"}',
    "huge": '{"pid": PID, "started": 1700000000, "boot_dir": "' + "x" * (2 << 20) + '", "cache_dir": "/c"}',
    "counts a string": '{"pid": PID, "started": 1700000000, "boot_dir": "/b", "cache_dir": "/c", "counts": "x"}',
    "a newline in a path": '{"pid": PID, "started": 1700000000, "boot_dir": "/b\\nfake line", "cache_dir": "/c"}',
    "a lone surrogate": '{"pid": PID, "started": 1700000000, "boot_dir": "/\\ud800", "cache_dir": "/c"}',
    "a FIFO": None,
}


def _tree(tmp_path: Path) -> Path:
    boot, cache = tmp_path / "boot", tmp_path / "cache"
    (boot / "loader" / "entries").mkdir(parents=True)
    (boot / "vmlinuz-1").write_bytes(os.urandom(8192))
    (boot / "loader" / "entries" / "one.conf").write_text("title one\nversion 1\nlinux /vmlinuz-1\n")
    cache.mkdir(mode=0o700, exist_ok=True)
    os.chmod(tmp_path, 0o755)
    return write_config(tmp_path / "cfg.toml", boot, cache, tmp_path / "run", watch={"settle": "100ms"})


def _write_status(tmp_path: Path, content: str | None, pid: int) -> None:
    (tmp_path / "run").mkdir(exist_ok=True)
    path = tmp_path / "run" / "status.json"
    if content is None:
        os.mkfifo(path)
    else:
        path.write_text(content.replace("PID", str(pid)))


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A process whose command line says bootwatch, but that is no daemon."""
    proc = subprocess.Popen(["bash", "-c", "exec -a bootwatch-fake sleep 60"])
    time.sleep(0.2)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A process that holds the daemon lock on the cache directory, as a running daemon does."""
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n")
    (tmp_path / "cache").mkdir(mode=0o700, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "cache")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    yield proc
    proc.kill()
    proc.wait()


def _one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    what = (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert result.returncode == code, what
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, what
    assert not result.stderr, what
    lines = result.stdout.splitlines()
    assert len(lines) == 1, what
    return lines[0]


@pytest.mark.parametrize("content", sorted(HOSTILE))
def test_status_with_a_hostile_status_file_is_one_line_not_an_internal_error(tmp_path: Path, sleeper,
                                                                             content: str) -> None:
    """No daemon holds the lock: 'not running' (exit 3), whatever the file says."""
    config = _tree(tmp_path)
    _write_status(tmp_path, HOSTILE[content], sleeper.pid)
    line = _one_line(run_with_config(config, "status", timeout=30), 3)
    assert "not running" in line, line
    result = run_with_config(config, "status", "--json", timeout=30)
    assert result.returncode == 3 and json.loads(result.stdout)["running"] is False, result


@pytest.mark.parametrize("content", sorted(HOSTILE))
def test_status_of_a_running_daemon_with_a_hostile_status_file_says_running_without_details(
        tmp_path: Path, lock_holder, content: str) -> None:
    config = _tree(tmp_path)
    _write_status(tmp_path, HOSTILE[content], lock_holder.pid)
    line = _one_line(run_with_config(config, "status", timeout=30), 0)
    running = f"bootwatch is running (pid {lock_holder.pid}), no details: "
    assert line.startswith(running) and "status.json" in line, line
    result = run_with_config(config, "status", "--json", timeout=30)
    shown = json.loads(result.stdout)
    assert result.returncode == 0 and shown["running"] and shown["pid"] == lock_holder.pid, result
    assert "status.json" in shown["details_unavailable"], shown
    if content == "huge":
        assert "larger than 1 MiB" in line, line


def test_status_does_not_take_any_process_named_bootwatch_for_the_daemon(tmp_path: Path) -> None:
    """A stale status.json (daemon killed with SIGKILL) whose PID now runs 'vim /etc/bootwatch/...'."""
    config = _tree(tmp_path)
    editor = subprocess.Popen(["bash", "-c", "exec -a 'vim /etc/bootwatch/bootwatch.toml' sleep 60"])
    try:
        time.sleep(0.2)
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "status.json").write_text(json.dumps(
            {"pid": editor.pid, "started": time.time(), "boot_dir": "/boot", "cache_dir": str(tmp_path / "cache")}))
        result = run_with_config(config, "status")
        assert result.returncode == 3 and "not running" in result.stdout, result
    finally:
        editor.kill()
        editor.wait()


def test_status_gives_no_details_from_a_file_whose_pid_is_not_the_lock_holder(tmp_path: Path, lock_holder,
                                                                               sleeper) -> None:
    """The lock is held (a daemon runs) but status.json names another process: running, no details."""
    config = _tree(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "status.json").write_text(json.dumps(
        {"pid": sleeper.pid, "started": time.time(), "boot_dir": "/elsewhere", "cache_dir": "/elsewhere"}))
    line = _one_line(run_with_config(config, "status", timeout=30), 0)
    assert f"pid {lock_holder.pid}" in line and f"names PID {sleeper.pid}" in line and "/elsewhere" not in line, line


def test_status_without_a_cache_directory_is_not_running(tmp_path: Path) -> None:
    config = _tree(tmp_path)
    os.rmdir(tmp_path / "cache")
    assert "not running" in _one_line(run_with_config(config, "status", timeout=30), 3)
    assert not (tmp_path / "cache").exists(), "status created the cache directory"


def test_every_field_the_daemon_writes_is_read_back_with_its_type(tmp_path: Path) -> None:
    """from_json checks each field of DaemonStatus: a field added to one is added to the other."""
    from dataclasses import asdict, fields

    from bootwatch.daemon.status import _FIELDS, DaemonStatus, load_status, write_status
    assert set(_FIELDS) == {f.name for f in fields(DaemonStatus)}
    written = DaemonStatus(pid=os.getpid(), started=time.time(), boot_dir="/boot", cache_dir="/var/cache/bootwatch",
                           last_reconcile=time.time(), counts={"CACHED": 2, "RESTORED": 1}, problems=1,
                           state="running", lock_wait="waiting for PID 1", degraded="read-only")
    write_status(tmp_path, written)
    assert asdict(load_status(tmp_path)) == asdict(written)
