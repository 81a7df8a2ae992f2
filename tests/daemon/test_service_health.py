"""The daemon judges every boot entry at start and after each batch: STATUS=, the status file,
``bootwatch status``, the metric ``bootwatch_entries_by_state`` count the entries by state, and
the journal hears once of an entry that becomes BROKEN (``ENTRY_BROKEN``, its own MESSAGE_ID)
and once when it is no longer (``ENTRY_RECOVERED``).

A real ``bootwatch run`` child (tests/daemonproc.py), real images: Debian's cloud kernel and
the initramfs Debian's own mkinitramfs builds for it, truncated in place as a full /boot leaves
it. The entries' ``root=`` names no filesystem of this host, so the root check cannot make an
entry BROKEN; the assertions are on the BROKEN count and the entry the truncation broke.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemonproc import REPO_ROOT, DaemonProcess, run_with_config, write_config
from journalentry import parse_entry
from polling import wait_for
from realboot.grub_mkconfig import Kernel, Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import mkinitramfs_image

from bootwatch.log import Event

BootTree = Any  # conftest.BootTree

pytestmark = [pytest.mark.slow, pytest.mark.root]

OPTIONS = "root=UUID=0b5c1d1e-7f1c-4c55-9d2f-1f0c9a7d3e11 ro quiet"
STATES = ("BOOTABLE", "AT_RISK", "UNKNOWN", "BROKEN")


@pytest.fixture(scope="module")
def real_pair() -> tuple[Kernel, Path]:
    """A real kernel and the real mkinitramfs image for it."""
    try:
        deb = kernel_debs(1)[0]
        return extracted_kernel(deb), mkinitramfs_image(deb)
    except Unavailable as e:
        pytest.skip(str(e))


def two_entries(tree: BootTree, pair: tuple[Kernel, Path]) -> Path:
    """BLS entries ``a`` and ``b``, each with its own copy of the real pair; b's initramfs is returned."""
    kernel, initramfs = pair
    for name in ("a", "b"):
        shutil.copyfile(kernel.boot / f"vmlinuz-{kernel.version}", tree.boot / f"vmlinuz-{name}")
        shutil.copyfile(initramfs, tree.boot / f"initrd-{name}.img")
        tree.write_entry(name, [("options", OPTIONS)], title=f"Debian {name}", linux=f"/vmlinuz-{name}",
                         initrd=[f"/initrd-{name}.img"])
    return tree.boot / "initrd-b.img"


def truncate_in_place(path: Path) -> None:
    """What a full /boot leaves behind: the file cut short, written and closed (one close event)."""
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def metric(prom: Path, name: str) -> float | None:
    try:
        text = prom.read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def by_state(prom: Path) -> dict[str, float | None]:
    return {state: metric(prom, f'bootwatch_entries_by_state{{state="{state}"}}') for state in STATES}


def wait_status(daemon: DaemonProcess, predicate: Callable[[str], bool]) -> str:
    while True:
        status = daemon.wait_message("STATUS", timeout=60)["STATUS"]
        if predicate(status):
            return status


def test_a_truncated_initramfs_changes_the_counts_status_metric_and_is_logged_once(
        boot_tree: BootTree, real_pair: tuple[Kernel, Path]) -> None:
    tree = boot_tree
    initrd_b = two_entries(tree, real_pair)
    good = initrd_b.read_bytes()
    prom = tree.root / "textfile" / "bootwatch.prom"
    prom.parent.mkdir()
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"}, metrics={"textfile": str(prom)})
    with DaemonProcess(config, tree.root) as daemon:
        # The start: both entries judged before READY=1; none is BROKEN.
        ready = daemon.wait_ready(timeout=60)["STATUS"]
        assert f"watching {tree.boot}: 2 boot entries (bls 2): " in ready and "BROKEN" not in ready, ready
        before = by_state(prom)
        assert before["BROKEN"] == 0 and sum(n or 0 for n in before.values()) == 2, before

        truncate_in_place(initrd_b)
        status_line = wait_status(daemon, lambda s: "1 BROKEN" in s)
        assert re.match(rf"watching {re.escape(str(tree.boot))}: 2 boot entries \(bls 2\): [^;]*1 BROKEN; \d+ cached",
                        status_line), status_line
        wait_for(lambda: by_state(prom)["BROKEN"] == 1, what="bootwatch_entries_by_state BROKEN 1")
        assert sum(n or 0 for n in by_state(prom).values()) == 2
        status = run_with_config(config, "status", "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["entries_by_state"]["BROKEN"] == 1 and set(data["entries_by_state"]) == set(STATES)
        assert data["entry_states"]["bls:b.conf"] == "BROKEN" and data["entry_states"]["bls:a.conf"] != "BROKEN"
        text = run_with_config(config, "status").stdout
        assert "1 BROKEN" in text and "BROKEN bls:b.conf (see 'bootwatch entries')" in text, text

        # Another pass (a reload reconciles everything): still BROKEN, not logged again.
        daemon.signal(signal.SIGHUP)
        daemon.wait_ready(timeout=60)
        wait_status(daemon, lambda s: "1 BROKEN" in s)

        initrd_b.write_bytes(good)  # rebuilt: no longer BROKEN, said once
        wait_status(daemon, lambda s: "2 boot entries (bls 2): " in s and "BROKEN" not in s)
        wait_for(lambda: by_state(prom)["BROKEN"] == 0, what="bootwatch_entries_by_state BROKEN 0")
        output = daemon.output()
    broken = [line for line in output.splitlines() if "event=ENTRY_BROKEN" in line]
    assert len(broken) == 1, output
    assert f"ERROR boot entry bls:b.conf (Debian b) is BROKEN: {initrd_b}: " in broken[0], broken
    recovered = [line for line in output.splitlines() if "event=ENTRY_RECOVERED" in line]
    assert len(recovered) == 1 and "NOTICE boot entry bls:b.conf (Debian b) is no longer BROKEN" in recovered[0], \
        output
    assert "event=ENTRY_AT_RISK" not in output
    assert "Traceback" not in output, output


def test_entry_broken_is_a_journal_record_with_its_message_id_and_fields(
        boot_tree: BootTree, real_pair: tuple[Kernel, Path]) -> None:
    """The daemon as systemd runs it, stderr nowhere: it logs over journald's native protocol to
    /run/systemd/journal/socket, which a private mount namespace (unshare) makes this test's own
    datagram socket. The records are read back as journald parses them (tests/journalentry.py)."""
    if shutil.which("unshare") is None or not Path("/run/systemd").is_dir():
        pytest.skip("needs unshare and /run/systemd")
    tree = boot_tree
    initrd_b = two_entries(tree, real_pair)
    good = initrd_b.read_bytes()
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"})
    journal_path = tree.root / "journal.socket"
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(journal_path))
    records: list[dict[str, bytes]] = []

    def wait_record(name: str) -> dict[str, bytes]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            journal.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                record = dict(parse_entry(journal.recv(1 << 20)))
            except socket.timeout:
                break
            records.append(record)
            if record.get("BOOTWATCH_EVENT") == name.encode():
                return record
        raise AssertionError(f"no journal record {name}; got: {[r.get('MESSAGE') for r in records]}")

    mount_journal = ('mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/journal && '
                     'touch /run/systemd/journal/socket && mount --bind "$TEST_JOURNAL" /run/systemd/journal/socket && '
                     'exec "$@"')
    env = {k: v for k, v in os.environ.items() if k not in ("BOOTWATCH_CONFIG", "JOURNAL_STREAM", "NOTIFY_SOCKET")}
    env.update(PYTHONPATH=str(REPO_ROOT), PYTHONDONTWRITEBYTECODE="1", TEST_JOURNAL=str(journal_path))
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", mount_journal, "sh",
                             sys.executable, "-m", "bootwatch", "--config", str(config), "run"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_record("DAEMON_STARTED")
        truncate_in_place(initrd_b)
        broken = wait_record("ENTRY_BROKEN")
        assert broken["MESSAGE_ID"] == Event.ENTRY_BROKEN.message_id.encode()
        assert broken["PRIORITY"] == b"3" and broken["SYSLOG_IDENTIFIER"] == b"bootwatch"
        assert broken["BOOTWATCH_ENTRY"] == b"bls:b.conf" and broken["BOOTWATCH_TITLE"] == b"Debian b"
        assert broken["BOOTWATCH_STATE"] == b"BROKEN"
        assert broken["BOOTWATCH_PATH"] == str(tree.entries / "b.conf").encode()
        findings = broken["BOOTWATCH_FINDINGS"].decode().splitlines()
        assert findings[0].startswith(f"{initrd_b}: "), findings  # the worst first, naming the file
        assert broken["MESSAGE"].decode().startswith(f"boot entry bls:b.conf (Debian b) is BROKEN: {initrd_b}: ")
        initrd_b.write_bytes(good)
        recovered = wait_record("ENTRY_RECOVERED")
        assert recovered["MESSAGE_ID"] == Event.ENTRY_RECOVERED.message_id.encode()
        assert recovered["PRIORITY"] == b"5"
        assert recovered["BOOTWATCH_ENTRY"] == b"bls:b.conf" and recovered["BOOTWATCH_PREVIOUS_STATE"] == b"BROKEN"
        assert recovered["BOOTWATCH_STATE"] != b"BROKEN"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        journal.close()
    assert sum(1 for r in records if r.get("BOOTWATCH_EVENT") == b"ENTRY_BROKEN") == 1
    assert not [r for r in records if r.get("BOOTWATCH_EVENT") == b"ENTRY_AT_RISK"]
    assert not [r for r in records if b"Traceback" in r.get("MESSAGE", b"")]
