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
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"})
    with DaemonProcess(config, tree.root) as daemon:
        ready = daemon.wait_ready()["STATUS"]
        assert ready.startswith(f"watching {tree.boot}: 8 boot entries (bls 1, grub 7); 2 cached"), ready
        output = daemon.output()
    assert "event=NO_BOOT_ENTRIES" not in output
    [started] = [line for line in output.splitlines() if "event=DAEMON_STARTED" in line]
    assert f"watching {tree.boot} (8 boot entries (bls 1, grub 7); cache {tree.cache}): 2 paths examined" in started
