"""``bootwatch status``: liveness is the daemon lock on the cache directory, status.json is untrusted.

Real child processes: the daemon lock is held by a real process with flock(2) on the cache
directory (what store.CacheStore.hold_daemon_lock takes), stale and hostile status files are real
files and FIFOs, and the processes a stale PID may now name are real processes.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonproc import run_with_config, write_config
from polling import wait_until

from bootwatch.daemon.status import DaemonStatus, daemon_pids, load_status, status_path, write_status
from bootwatch.errors import BootwatchError

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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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

    from bootwatch.daemon.status import _FIELDS
    assert set(_FIELDS) == {f.name for f in fields(DaemonStatus)}
    written = DaemonStatus(pid=os.getpid(), started=time.time(), boot_dir="/boot", cache_dir="/var/cache/bootwatch",
                           last_reconcile=time.time(), counts={"CACHED": 2, "RESTORED": 1}, problems=1,
                           state="running", lock_wait="waiting for PID 1", degraded="read-only",
                           transaction_wait="waiting for dpkg (PID 2) to finish before deciding on 1 removed file",
                           entries={"grub": 4, "bls": 0}, entries_text="4 boot entries (grub 4, bls 0)",
                           entries_warning=None,
                           entries_by_state={"BOOTABLE": 2, "AT_RISK": 0, "UNKNOWN": 1, "BROKEN": 1},
                           entry_states={"grub:gnulinux-simple": "BOOTABLE", "bls:a.conf": "BROKEN",
                                         "bls:b.conf": "UNKNOWN", "uki:c.efi": "BOOTABLE"})
    write_status(tmp_path, written)
    assert asdict(load_status(tmp_path)) == asdict(written)


# ---------------------------------------------------------------- the module itself (bootwatch.daemon.status)

def _status(**changes: object) -> DaemonStatus:
    values: dict[str, object] = dict(pid=os.getpid(), started=1_700_000_000.0, boot_dir="/boot",
                                     cache_dir="/var/cache/bootwatch")
    values.update(changes)
    return DaemonStatus(**values)  # type: ignore[arg-type]


def _load_error(runtime: Path) -> str:
    """The one-line error load_status gives for ``runtime``'s status.json."""
    with pytest.raises(BootwatchError) as raised:
        load_status(runtime)
    message = str(raised.value)
    assert message.startswith(f"{runtime / 'status.json'}: ") and "\n" not in message, message
    return message


GOOD = {"pid": 1234, "started": 1_700_000_000, "boot_dir": "/boot", "cache_dir": "/c"}


@pytest.mark.parametrize(("change", "field"), [
    ({"pid": 0}, "pid"), ({"pid": -5}, "pid"), ({"pid": True}, "pid"), ({"pid": 1.5}, "pid"), ({"pid": "1"}, "pid"),
    ({"started": float("nan")}, "started"), ({"started": float("inf")}, "started"), ({"started": 1e300}, "started"),
    ({"started": None}, "started"), ({"last_reconcile": "yesterday"}, "last_reconcile"),
    ({"boot_dir": "/b\x1b[2J"}, "boot_dir"), ({"boot_dir": 7}, "boot_dir"), ({"state": "running\nfake"}, "state"),
    ({"counts": {"CACHED": -1}}, "counts"), ({"counts": {"CAC\nHED": 1}}, "counts"), ({"counts": [1]}, "counts"),
    ({"problems": False}, "problems"), ({"error": 3}, "error"), ({"degraded": ["x"]}, "degraded"),
    ({"entries": {"grub": -1}}, "entries"), ({"entries": "grub 4"}, "entries"),
    ({"entries_text": "4\nfake"}, "entries_text"), ({"entries_warning": 0}, "entries_warning"),
    ({"entries_by_state": {"FINE": 1}}, "entries_by_state"), ({"entries_by_state": {"BROKEN": -1}}, "entries_by_state"),
    ({"entry_states": {"bls:a.conf": "FINE"}}, "entry_states"),
    ({"entry_states": {"bls:a\n": "BROKEN"}}, "entry_states"),
    ({"entry_states": ["bls:a.conf"]}, "entry_states"),
])
def test_load_status_refuses_a_field_without_its_type_naming_the_field(tmp_path: Path, change: dict,
                                                                        field: str) -> None:
    (tmp_path / "status.json").write_text(json.dumps({**GOOD, **change}))  # NaN and Infinity as Python writes them
    message = _load_error(tmp_path)
    assert "is not a status file the daemon wrote" in message and f"'{field}'" in message, message


@pytest.mark.parametrize("missing", ["pid", "started", "boot_dir", "cache_dir"])
def test_load_status_refuses_a_file_without_a_required_field(tmp_path: Path, missing: str) -> None:
    (tmp_path / "status.json").write_text(json.dumps({k: v for k, v in GOOD.items() if k != missing}))
    assert f"'{missing}' is missing" in _load_error(tmp_path)


def test_load_status_reads_optional_fields_as_their_defaults_and_ignores_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / "status.json").write_text(json.dumps({**GOOD, "future_field": {"x": [1]}, "error": None}))
    status = load_status(tmp_path)
    assert (status.pid, status.started, status.boot_dir, status.cache_dir) == (1234, 1_700_000_000, "/boot", "/c")
    assert status.counts == {} and status.problems == 0 and status.last_reconcile is None and status.error is None
    assert not hasattr(status, "future_field")


@pytest.mark.parametrize(("content", "said"), [
    (None, "does not exist"),
    (b"{not json", "is not valid JSON"),
    (b'{"pid": 1, "boot_dir": "\xff"}', "is not valid JSON"),  # not UTF-8
    (b"[" * 100_000 + b"]" * 100_000, "is not valid JSON"),  # nested deeper than the parser recurses
    (b"[]", "the top level is a list, expected an object"),
    (b'"text"', "the top level is a str, expected an object"),
    (b" " * ((1 << 20) + 1), "larger than 1 MiB"),
])
def test_load_status_names_the_file_and_what_is_wrong_with_it(tmp_path: Path, content: bytes | None,
                                                              said: str) -> None:
    if content is not None:
        (tmp_path / "status.json").write_bytes(content)
    assert said in _load_error(tmp_path)


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink"])
def test_load_status_reads_only_a_regular_file_and_never_blocks(tmp_path: Path, kind: str) -> None:
    """A FIFO nobody writes would block a plain open(2) for ever; a symlink is not followed."""
    path = tmp_path / "status.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        write_status(tmp_path / "elsewhere", _status())
        path.symlink_to(tmp_path / "elsewhere" / "status.json")
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.append(_load_error(tmp_path)), daemon=True)
    reader.start()
    reader.join(30)
    if reader.is_alive():  # blocked in open(2) or read(2): let it go, then fail
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"load_status blocked on a {kind}")
    [message] = errors
    assert {"fifo": "is a FIFO", "directory": "is a directory", "symlink": "cannot be read"}[kind] in message, message


def test_write_status_replaces_the_file_atomically_readable_by_everyone(tmp_path: Path) -> None:
    runtime = tmp_path / "run" / "bootwatch"  # created, parents too
    first = _status(counts={"CACHED": 3}, state="running")
    write_status(runtime, first)
    path = status_path(runtime)
    inode = path.stat().st_ino
    assert load_status(runtime) == first
    second = _status(counts={"CACHED": 2, "MISSING": 1}, problems=1, state="stopping", degraded="read-only")
    write_status(runtime, second)
    assert load_status(runtime) == second
    assert path.stat().st_ino != inode, "the status file was rewritten in place, not replaced"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and stat.S_IMODE(runtime.stat().st_mode) == 0o755
    assert sorted(p.name for p in runtime.iterdir()) == ["status.json"], "a temp file was left behind"


def test_write_status_replaces_a_symlink_planted_at_its_name_and_writes_nothing_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    runtime = tmp_path / "run"
    runtime.mkdir()
    (runtime / "status.json").symlink_to(victim)
    write_status(runtime, _status())
    assert victim.read_text() == "precious\n"
    assert not (runtime / "status.json").is_symlink() and load_status(runtime) == _status()


def test_summary_says_the_most_urgent_thing_first() -> None:
    assert _status(lock_wait="waiting for PID 7", error="corrupt").summary() == "watching /boot: waiting for PID 7"
    waiting = "waiting for dpkg (PID 8) to finish before deciding on 2 removed files"
    assert _status(transaction_wait=waiting, error="corrupt").summary() == f"watching /boot: {waiting}"
    assert _status(lock_wait="waiting for PID 7", transaction_wait=waiting).summary() == \
        "watching /boot: waiting for PID 7"
    assert _status(error="index corrupt", references_unknown="x").summary() == "watching /boot: index corrupt"
    line = _status(references_unknown="the entries directory is gone").summary()
    assert line == ("watching /boot: references unknown, nothing is cleaned or deleted: "
                    "the entries directory is gone")
    line = _status(counts={"CACHED": 3, "MISSING": 1, "RESTORED": 2}, problems=1, degraded="read-only cache",
                   last_reconcile=time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))).summary()
    assert line == ("watching /boot: 6 cached, 1 missing, 2 restored, last sync 03:04:05, 1 with problems; "
                    "read-only cache")
    assert ", with problems" not in _status().summary() and _status().summary().startswith("watching /boot: 0 cached")


def test_summary_names_the_sources_found_and_the_entry_count(tmp_path: Path) -> None:
    """From a real inventory: a GRUB grub.cfg (the real grub-mkconfig's, tests/realboot/samples)
    and one BLS entry; then nothing at all, which is a WARNING naming what was looked at."""
    import shutil

    from bootwatch.entries.inventory import InventorySettings, read_inventory
    from bootwatch.entries.summary import Census
    boot = tmp_path / "boot"
    (boot / "loader" / "entries").mkdir(parents=True)
    (boot / "loader" / "entries" / "one.conf").write_text("title one\nlinux /vmlinuz-1\n")
    (boot / "grub").mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "realboot" / "samples" / "grub-btrfs" / "grub.cfg",
                boot / "grub" / "grub.cfg")
    status = _status(boot_dir=str(boot), counts={"CACHED": 2},
                     last_reconcile=time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1)))
    status.set_entries(Census.of(read_inventory(InventorySettings(boot))))
    assert status.entries == {"bls": 1, "grub": 3} and status.entries_warning is None
    assert status.summary() == (f"watching {boot}: 4 boot entries (bls 1, grub 3); 2 cached, 0 missing, 0 restored, "
                                "last sync 03:04:05")
    shutil.rmtree(boot / "loader")
    shutil.rmtree(boot / "grub")
    status.set_entries(Census.of(read_inventory(InventorySettings(boot))))
    assert status.entries == {}
    line = status.summary()
    assert line.startswith(f"watching {boot}: WARNING: no boot entries: no entry source found (looked at "
                           f"{boot}/loader/entries, {boot}/EFI/Linux, {boot}/grub/grub.cfg, {boot}/grub2/grub.cfg); "
                           "2 cached"), line
    status.references_unknown = "the entries directory is gone"
    assert status.summary().startswith(f"watching {boot}: WARNING: no boot entries") and \
        status.summary().endswith("references unknown, nothing is cleaned or deleted: the entries directory is gone")


def test_set_counts_counts_a_real_cache_by_state(boot_tree) -> None:
    tree = boot_tree
    tree.write_kernel("1")
    tree.write_kernel("2")
    tree.write_entry("one", linux="/vmlinuz-1", initrd=["/initramfs-1.img"])
    tree.write_entry("two", linux="/vmlinuz-2", initrd=["/initramfs-2.img"])
    cache = tree.library()
    cache.add(["/vmlinuz-1", "/initramfs-1.img", "/vmlinuz-2", "/initramfs-2.img"])
    tree.path("/vmlinuz-2").unlink()  # removed by someone: MISSING
    image = tree.image(cache.load_index().newest("/initramfs-1.img"))
    image.write_bytes(b"rotten")  # a damaged image: a problem
    status = _status()
    status.set_counts(cache.list())
    assert status.counts == {"CACHED": 3, "MISSING": 1} and status.problems == 1, status


# -- liveness: who holds the daemon lock on the cache directory

def _flock_child(path: Path, *, blocking: bool = False) -> subprocess.Popen:
    """A process that takes flock(LOCK_EX) on ``path`` (a directory or a file) and keeps it."""
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "print('opened', flush=True)\n"
            f"fcntl.flock(fd, fcntl.LOCK_EX{'' if blocking else ' | fcntl.LOCK_NB'})\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "opened\n"
    return proc


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_daemon_pids_is_the_holder_of_the_lock_not_a_waiter(tmp_path: Path, children) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    assert daemon_pids(cache) == []
    holder = _flock_child(cache)
    children.append(holder)
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    waiter = _flock_child(cache, blocking=True)
    children.append(waiter)
    assert wait_until(lambda: any("->" in line for line in Path("/proc/locks").read_text().splitlines()))
    assert daemon_pids(cache) == [holder.pid], "a process waiting for the lock was taken for the daemon"
    holder.kill()
    holder.wait()
    assert waiter.stdout is not None and waiter.stdout.readline() == "locked\n"
    assert daemon_pids(cache) == [waiter.pid]


def test_daemon_pids_counts_only_a_lock_on_the_cache_directory_itself(tmp_path: Path, children) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "lock").write_text("")
    other = tmp_path / "other-cache"
    other.mkdir()
    for path in (cache / "lock", other):
        children.append(_flock_child(path))
    for proc in children:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    assert daemon_pids(cache) == []
    assert daemon_pids(other) == [children[1].pid]


def test_daemon_pids_without_a_cache_directory_is_none_running(tmp_path: Path) -> None:
    assert daemon_pids(tmp_path / "no-such-cache") == []
    assert not (tmp_path / "no-such-cache").exists()


def test_daemon_pids_that_cannot_be_told_is_an_error_not_none_running(tmp_path: Path) -> None:
    """A cache path that cannot be examined (here: under a regular file) is not 'not running'."""
    (tmp_path / "file").write_text("")
    with pytest.raises(BootwatchError) as raised:
        daemon_pids(tmp_path / "file" / "cache")
    assert "cannot tell whether the daemon runs" in str(raised.value), raised.value


def test_the_summary_counts_entries_by_health_state_and_names_are_kept_one_line(tmp_path: Path) -> None:
    """After a health pass STATUS= says how many entries are in each state (best first, zero left
    out); an entry id with any character is one printable line in the status file."""
    from bootwatch.entries.inventory import InventorySettings, read_inventory
    from bootwatch.entries.summary import Census
    from bootwatch.health.model import Check, EntryHealth, EntryState, Finding
    boot = tmp_path / "boot"
    (boot / "loader" / "entries").mkdir(parents=True)
    for name in ("a", "b", "c\u2028d"):
        (boot / "loader" / "entries" / f"{name}.conf").write_text(f"title {name}\nlinux /vmlinuz-1\n")
    inventory = read_inventory(InventorySettings(boot))
    status = _status(boot_dir=str(boot), counts={"CACHED": 1},
                     last_reconcile=time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1)))
    status.set_entries(Census.of(inventory))
    assert status.summary().startswith(f"watching {boot}: 3 boot entries (bls 3); 1 cached"), status.summary()
    a, b, c = sorted(inventory.entries, key=lambda e: e.id)
    broken = Finding(EntryState.BROKEN, Check.FORMAT, "/boot/vmlinuz-1: truncated", "/boot/vmlinuz-1")
    status.set_health([EntryHealth.of(a, []), EntryHealth.of(b, []), EntryHealth.of(c, [broken])])
    assert status.summary() == (f"watching {boot}: 3 boot entries (bls 3): 2 bootable, 1 BROKEN; 1 cached, 0 missing, "
                                "0 restored, last sync 03:04:05")
    assert status.entries_by_state == {"BOOTABLE": 2, "AT_RISK": 0, "UNKNOWN": 0, "BROKEN": 1}
    assert status.entry_states == {"bls:a.conf": "BOOTABLE", "bls:b.conf": "BOOTABLE", "bls:c\\u2028d.conf": "BROKEN"}
    write_status(tmp_path, status)
    assert load_status(tmp_path).entry_states == status.entry_states
