"""The daemon judges every boot entry at start and after each batch: STATUS=, the status file,
``bootwatch status``, the metric ``bootwatch_entries_by_state`` count the entries by state, and
the journal hears once of an entry that becomes BROKEN (``ENTRY_BROKEN``, its own MESSAGE_ID)
and once when it is no longer (``ENTRY_RECOVERED``).

A real ``bootwatch run`` child (tests/daemonproc.py), real images: Debian's cloud kernel and
the initramfs Debian's own mkinitramfs builds for it, truncated in place as a full /boot leaves
it. The entries' ``root=`` is a real ext4 on a loop device holding the kernel's modules
(tests/realboot/loop_root.py), so a good entry is BOOTABLE.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import REPO_ROOT, DaemonProcess, run_with_config, write_config
from journalentry import parse_entry
from polling import wait_for
from realboot.grub_mkconfig import Kernel, Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import mkinitramfs_image
from realboot.loop_root import loop_root

from bootwatch.log import Event

BootTree = Any  # conftest.BootTree

pytestmark = [pytest.mark.slow, pytest.mark.root]

STATES = ("BOOTABLE", "AT_RISK", "UNKNOWN", "BROKEN")


@pytest.fixture(scope="module")
def real_pair() -> tuple[Kernel, Path]:
    """A real kernel and the real mkinitramfs image for it."""
    try:
        deb = kernel_debs(1)[0]
        return extracted_kernel(deb), mkinitramfs_image(deb)
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def root_device(real_pair: tuple[Kernel, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The device of a mounted root holding the kernel's modules: what the entries boot."""
    try:
        with loop_root(tmp_path_factory.mktemp("root"), (real_pair[0].version,)) as device:
            yield device
    except Unavailable as e:
        pytest.skip(str(e))


def two_entries(tree: BootTree, pair: tuple[Kernel, Path], root: str) -> Path:
    """BLS entries ``a`` and ``b``, each with its own copy of the real pair; b's initramfs is returned."""
    kernel, initramfs = pair
    for name in ("a", "b"):
        shutil.copyfile(kernel.boot / f"vmlinuz-{kernel.version}", tree.boot / f"vmlinuz-{name}")
        shutil.copyfile(initramfs, tree.boot / f"initrd-{name}.img")
        tree.write_entry(name, [("options", f"root={root} ro quiet")], title=f"Debian {name}",
                         linux=f"/vmlinuz-{name}", initrd=[f"/initrd-{name}.img"])
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
        boot_tree: BootTree, real_pair: tuple[Kernel, Path], root_device: str) -> None:
    tree = boot_tree
    initrd_b = two_entries(tree, real_pair, root_device)
    good = initrd_b.read_bytes()
    prom = tree.root / "textfile" / "bootwatch.prom"
    prom.parent.mkdir()
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"}, metrics={"textfile": str(prom)})
    with DaemonProcess(config, tree.root) as daemon:
        # The start: both entries judged before READY=1.
        ready = daemon.wait_ready(timeout=60)["STATUS"]
        assert ready.startswith(f"watching {tree.boot}: 2 boot entries (bls 2): 2 bootable; "), ready
        assert by_state(prom) == {"BOOTABLE": 2, "AT_RISK": 0, "UNKNOWN": 0, "BROKEN": 0}

        truncate_in_place(initrd_b)
        status_line = wait_status(daemon, lambda s: "1 BROKEN" in s)
        assert status_line.startswith(f"watching {tree.boot}: 2 boot entries (bls 2): 1 bootable, 1 BROKEN; "), \
            status_line
        wait_for(lambda: by_state(prom) == {"BOOTABLE": 1, "AT_RISK": 0, "UNKNOWN": 0, "BROKEN": 1},
                 what="bootwatch_entries_by_state: 1 BOOTABLE, 1 BROKEN")
        status = run_with_config(config, "status", "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["entries_by_state"] == {"BOOTABLE": 1, "AT_RISK": 0, "UNKNOWN": 0, "BROKEN": 1}
        assert data["entry_states"] == {"bls:a.conf": "BOOTABLE", "bls:b.conf": "BROKEN"}
        text = run_with_config(config, "status").stdout
        assert "  entry health:   1 bootable, 1 BROKEN\n" in text, text
        assert "BROKEN bls:b.conf (see 'bootwatch entries')" in text and "bls:a.conf" not in text, text

        # Another pass (a reload reconciles everything): still BROKEN, not logged again.
        daemon.signal(signal.SIGHUP)
        daemon.wait_ready(timeout=60)
        wait_status(daemon, lambda s: "1 BROKEN" in s)

        initrd_b.write_bytes(good)  # rebuilt: no longer BROKEN, said once
        wait_status(daemon, lambda s: "2 boot entries (bls 2): 2 bootable; " in s)
        wait_for(lambda: by_state(prom)["BROKEN"] == 0, what="bootwatch_entries_by_state BROKEN 0")
        output = daemon.output()
    broken = [line for line in output.splitlines() if "event=ENTRY_BROKEN" in line]
    assert len(broken) == 1, output
    assert f"ERROR boot entry bls:b.conf (Debian b) is BROKEN: {initrd_b}: " in broken[0], broken
    recovered = [line for line in output.splitlines() if "event=ENTRY_RECOVERED" in line]
    assert len(recovered) == 1, output
    assert "NOTICE boot entry bls:b.conf (Debian b) is no longer BROKEN: BOOTABLE now" in recovered[0], recovered
    assert "event=ENTRY_AT_RISK" not in output
    assert "Traceback" not in output, output


def test_entry_broken_is_a_journal_record_with_its_message_id_and_fields(
        boot_tree: BootTree, real_pair: tuple[Kernel, Path], root_device: str) -> None:
    """The daemon as systemd runs it, stderr nowhere: it logs over journald's native protocol to
    /run/systemd/journal/socket, which a private mount namespace (unshare) makes this test's own
    datagram socket. The records are read back as journald parses them (tests/journalentry.py)."""
    if shutil.which("unshare") is None or not Path("/run/systemd").is_dir():
        pytest.skip("needs unshare and /run/systemd")
    tree = boot_tree
    initrd_b = two_entries(tree, real_pair, root_device)
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
        [finding] = broken["BOOTWATCH_FINDINGS"].decode().splitlines()
        assert finding.startswith(f"{initrd_b}: "), finding  # naming the file
        assert broken["MESSAGE"].decode().startswith(f"boot entry bls:b.conf (Debian b) is BROKEN: {initrd_b}: ")
        initrd_b.write_bytes(good)
        recovered = wait_record("ENTRY_RECOVERED")
        assert recovered["MESSAGE_ID"] == Event.ENTRY_RECOVERED.message_id.encode()
        assert recovered["PRIORITY"] == b"5"
        assert recovered["BOOTWATCH_ENTRY"] == b"bls:b.conf" and recovered["BOOTWATCH_PREVIOUS_STATE"] == b"BROKEN"
        assert recovered["BOOTWATCH_STATE"] == b"BOOTABLE"
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


def test_a_file_only_the_cache_holds_makes_the_entry_at_risk_logged_once(
        boot_tree: BootTree, real_pair: tuple[Kernel, Path], root_device: str) -> None:
    """With restores off, an initramfs removed from /boot is in the cache only: the entry boots
    once it is put back, but depends on the cache (AT_RISK, ENTRY_AT_RISK naming the command)."""
    tree = boot_tree
    initrd_b = two_entries(tree, real_pair, root_device)
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"}, cache={"auto_restore": False})
    with DaemonProcess(config, tree.root) as daemon:
        ready = daemon.wait_ready(timeout=60)["STATUS"]
        assert "2 boot entries (bls 2): 2 bootable; " in ready, ready
        initrd_b.unlink()
        wait_status(daemon, lambda s: "2 boot entries (bls 2): 1 bootable, 1 AT_RISK; " in s)
        daemon.signal(signal.SIGHUP)  # another pass: still AT_RISK, not logged again
        daemon.wait_ready(timeout=60)
        wait_status(daemon, lambda s: "1 AT_RISK" in s)
        text = run_with_config(config, "status").stdout
        assert "  entry health:   1 bootable, 1 AT_RISK\n" in text, text
        assert "AT_RISK bls:b.conf (see 'bootwatch entries')" in text, text
        restore = run_with_config(config, "restore", "/initrd-b.img")
        assert restore.returncode == 0, restore.stdout + restore.stderr
        wait_status(daemon, lambda s: "2 boot entries (bls 2): 2 bootable; " in s)
        output = daemon.output()
    [at_risk] = [line for line in output.splitlines() if "event=ENTRY_AT_RISK" in line]
    assert f"WARNING boot entry bls:b.conf (Debian b) is AT_RISK: {initrd_b}: missing; only the cache holds it" \
        in at_risk and "bootwatch restore /initrd-b.img" in at_risk, at_risk
    [recovered] = [line for line in output.splitlines() if "event=ENTRY_RECOVERED" in line]
    assert "is no longer AT_RISK: BOOTABLE now" in recovered and "previous_state=AT_RISK" in recovered, recovered
    assert "event=ENTRY_BROKEN" not in output and "Traceback" not in output, output
