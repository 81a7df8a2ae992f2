"""The daemon says what boot entries it sees: STATUS=, the status file, ``bootwatch status``, the
metrics, and a journal warning (its own MESSAGE_ID) when there are none, once each time it becomes so.

A real ``bootwatch run`` child with a real sd_notify socket (tests/daemonproc.py); its log lines
carry the event names that the journal records carry as ``BOOTWATCH_EVENT``. The GRUB
configuration is the grub-btrfs sample the real grub-mkconfig wrote (tests/realboot/README.md).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess, run_with_config, write_config
from polling import wait_for

pytestmark = pytest.mark.slow

BootTree = Any  # conftest.BootTree

SAMPLES = Path(__file__).resolve().parents[1] / "realboot" / "samples"


def metric(prom: Path, line_start: str) -> str | None:
    try:
        text = prom.read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return line.rsplit(" ", 1)[1]
    return None


def wait_status(daemon: DaemonProcess, text: str) -> str:
    while True:
        status = daemon.wait_message("STATUS", timeout=30)["STATUS"]
        if text in status:
            return status


def test_no_boot_entries_is_warned_once_shown_and_warned_again_when_it_recurs(boot_tree: BootTree) -> None:
    tree = boot_tree
    shutil.rmtree(tree.boot / "loader")  # no entry source at all, as on a host whose /boot is not mounted
    prom = tree.root / "textfile" / "bootwatch.prom"
    prom.parent.mkdir()
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"}, metrics={"textfile": str(prom)})
    staged = tree.root / "staged-grub"
    shutil.copytree(SAMPLES / "grub-btrfs", staged)
    with DaemonProcess(config, tree.root) as daemon:
        ready = daemon.wait_ready()["STATUS"]
        looked_at = ", ".join(str(tree.boot / p) for p in ("loader/entries", "EFI/Linux", "grub/grub.cfg",
                                                            "grub2/grub.cfg"))
        assert f"WARNING: no boot entries: no entry source found (looked at {looked_at})" in ready, ready
        assert metric(prom, "bootwatch_entries_none") == "1"
        status = run_with_config(config, "status")
        assert status.returncode == 0, status.stderr
        assert "boot entries:   no boot entries (no entry source found)" in status.stdout, status.stdout
        assert "WARNING:        no boot entries: no entry source found" in status.stdout
        assert "hint: is the boot partition mounted?" in status.stdout
        # Another pass (a reload reconciles everything): still so, not said again.
        daemon.signal(signal.SIGHUP)
        daemon.wait_ready()
        wait_status(daemon, "WARNING: no boot entries")

        os.rename(staged, tree.boot / "grub")  # the directory appears: a full pass
        status_line = wait_status(daemon, "7 boot entries (grub 7)")
        assert "WARNING" not in status_line
        wait_for(lambda: metric(prom, 'bootwatch_entries{source="grub"}') == "7", what="the grub metric")
        assert metric(prom, "bootwatch_entries_none") == "0"
        assert "7 boot entries (grub 7)" in run_with_config(config, "status").stdout

        os.rename(tree.boot / "grub", staged)  # gone again: warned again
        wait_status(daemon, "WARNING: no boot entries")
        wait_for(lambda: metric(prom, "bootwatch_entries_none") == "1", what="entries_none again")
        output = daemon.output()
    assert output.count("event=NO_BOOT_ENTRIES") == 2, output
    assert output.count("boot entries found again: 7 boot entries (grub 7)") == 1, output
    [started] = [line for line in output.splitlines() if "event=DAEMON_STARTED" in line]
    assert "(no boot entries (no entry source found); cache" in started and "0 paths examined" in started, started
    assert "Traceback" not in output, output


def test_started_line_and_status_name_the_sources_and_the_entry_count(boot_tree: BootTree) -> None:
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_entry("one", linux="/vmlinuz-1.0", initrd=["/initramfs-1.0.img"])
    shutil.copytree(SAMPLES / "grub-btrfs", tree.boot / "grub")
    for name in ("vmlinuz-linux", "intel-ucode.img", "initramfs-linux.img"):  # not the fallback initramfs
        tree.write_file(f"/{name}")
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"})
    with DaemonProcess(config, tree.root) as daemon:
        ready = daemon.wait_ready()["STATUS"]
        # The images are stand-ins, no kernel or initramfs: every entry fails its format check.
        assert ready.startswith(f"watching {tree.boot}: 8 boot entries (bls 1, grub 7): 8 BROKEN; 5 cached"), ready
        output = daemon.output()
    assert "event=NO_BOOT_ENTRIES" not in output
    [started] = [line for line in output.splitlines() if "event=DAEMON_STARTED" in line]
    # Every file the entries name: 2 of the BLS entry, 4 of the GRUB entries (one not there).
    assert f"watching {tree.boot} (8 boot entries (bls 1, grub 7); cache {tree.cache}): 6 paths examined, " \
        "5 hashed" in started, started


@pytest.mark.root
def test_the_warning_is_a_journal_record_with_its_message_id_once_each_time(boot_tree: BootTree) -> None:
    """The daemon as systemd runs it, stderr nowhere: it logs over journald's native protocol to
    /run/systemd/journal/socket, which a private mount namespace (unshare) makes this test's own
    datagram socket. The records are read back as journald parses them (tests/journalentry.py)."""
    import socket
    import subprocess
    import sys
    import time

    from daemonproc import REPO_ROOT
    from journalentry import parse_entry

    from bootwatch.log import Event
    if shutil.which("unshare") is None or not Path("/run/systemd").is_dir():
        pytest.skip("needs unshare and /run/systemd")
    tree = boot_tree
    shutil.rmtree(tree.boot / "loader")
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"})
    staged = tree.root / "staged-grub"
    shutil.copytree(SAMPLES / "grub-btrfs", staged)
    journal_path = tree.root / "journal.socket"
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(journal_path))
    records: list[dict[str, bytes]] = []

    def wait_record(predicate: Any, what: str) -> dict[str, bytes]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            journal.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                record = dict(parse_entry(journal.recv(1 << 20)))
            except socket.timeout:
                break
            records.append(record)
            if predicate(record):
                return record
        raise AssertionError(f"no journal record {what}; got: {[r.get('MESSAGE') for r in records]}")

    def event(name: str) -> Any:
        return lambda r: r.get("BOOTWATCH_EVENT") == name.encode()

    mount_journal = ('mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/journal && '
                     'touch /run/systemd/journal/socket && mount --bind "$TEST_JOURNAL" /run/systemd/journal/socket && '
                     'exec "$@"')
    env = {k: v for k, v in os.environ.items() if k not in ("BOOTWATCH_CONFIG", "JOURNAL_STREAM", "NOTIFY_SOCKET")}
    env.update(PYTHONPATH=str(REPO_ROOT), PYTHONDONTWRITEBYTECODE="1", TEST_JOURNAL=str(journal_path))
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", mount_journal, "sh",
                             sys.executable, "-m", "bootwatch", "--config", str(config), "run"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        warning = wait_record(event("NO_BOOT_ENTRIES"), "NO_BOOT_ENTRIES")
        assert warning["MESSAGE_ID"] == Event.NO_BOOT_ENTRIES.message_id.encode()
        assert warning["PRIORITY"] == b"4" and warning["SYSLOG_IDENTIFIER"] == b"bootwatch"
        assert warning["BOOTWATCH_PATH"] == str(tree.boot).encode()
        reason = warning["BOOTWATCH_REASON"].decode()
        assert reason.startswith("no boot entries: no entry source found (looked at ")
        assert str(tree.boot / "grub" / "grub.cfg") in reason and str(tree.boot / "loader" / "entries") in reason
        assert "is the boot partition mounted?" in warning["MESSAGE"].decode()
        wait_record(event("DAEMON_STARTED"), "DAEMON_STARTED")
        proc.send_signal(signal.SIGHUP)  # a reload and a full pass: still no entries, not said again
        wait_record(event("CONFIG_RELOADED"), "CONFIG_RELOADED")
        os.rename(staged, tree.boot / "grub")
        wait_record(lambda r: b"boot entries found again: 7 boot entries (grub 7)" in r.get("MESSAGE", b""),
                    "saying the entries are back")
        os.rename(tree.boot / "grub", staged)
        wait_record(event("NO_BOOT_ENTRIES"), "NO_BOOT_ENTRIES again")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        journal.close()
    assert sum(1 for r in records if r.get("BOOTWATCH_EVENT") == b"NO_BOOT_ENTRIES") == 2
    assert not [r for r in records if b"Traceback" in r.get("MESSAGE", b"")]
