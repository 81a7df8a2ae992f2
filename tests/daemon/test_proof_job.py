"""The daemon's boot proof job ([prove] on_new_kernel) inside a real ``bootwatch run``, with the
real qemu-system-x86_64 under TCG, a real Debian cloud kernel and busybox initramfs images.

What the job did is read from where an operator reads it: the proof store
(``<runtime>/proofs``), the node_exporter textfile, the daemon's log, and ``/proc`` for the VMs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess, write_config
from polling import wait_for
from realboot.grub_mkconfig import Kernel, Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import busybox_initramfs, static_busybox

pytestmark = pytest.mark.slow

QEMU = "qemu-system-x86_64"
BootTree = Any  # the boot_tree fixture of conftest

POWEROFF_INIT = """#!/bin/busybox sh
/bin/busybox echo "bootwatch-test: init ran"
/bin/busybox poweroff -f
"""
FAILING_INIT = """#!/bin/busybox sh
exit 1
"""
TICKING_INIT = """#!/bin/busybox sh
while :; do /bin/busybox echo tick; /bin/busybox sleep 1; done
"""


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    try:
        return extracted_kernel(kernel_debs(1)[0])
    except Unavailable as e:
        pytest.skip(f"no Debian kernel package: {e}")


@pytest.fixture(scope="module")
def busybox() -> None:
    try:
        static_busybox()
    except Unavailable as e:
        pytest.skip(str(e))


def needs_qemu() -> None:
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (apt-get install qemu-system-x86)")


def add_entry(boot: Path, name: str, kernel: Path, initrds: Sequence[Path]) -> None:
    """A new kernel as kernel-install lays it out: images first, then the BLS entry naming them."""
    shutil.copyfile(kernel, boot / f"vmlinuz-{name}")
    lines = [f"title {name}", f"linux /vmlinuz-{name}"]
    for i, initrd in enumerate(initrds):
        shutil.copyfile(initrd, boot / f"initrd-{name}-{i}.img")
        lines.append(f"initrd /initrd-{name}-{i}.img")
    lines.append("options root=UUID=0b5c1d1e-7f1c-4c55-9d2f-1f0c9a7d3e11 ro quiet")
    (boot / "loader" / "entries" / f"{name}.conf").write_text("\n".join(lines) + "\n")


def config_for(tree: BootTree, textfile: Path, **prove: object) -> Path:
    textfile.parent.mkdir(exist_ok=True)
    return write_config(tree.root / "bootwatch.toml", tree.boot, tree.cache, tree.root / "run",
                        watch={"settle": "100ms"}, metrics={"textfile": str(textfile)},
                        **({"prove": prove} if prove else {}))


def stored(tree: BootTree, entry: str) -> dict[str, Any] | None:
    try:
        return json.loads((tree.root / "run" / "proofs" / f"bls-{entry}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def metric(textfile: Path, name: str, entry: str) -> float | None:
    try:
        text = textfile.read_text()
    except FileNotFoundError:
        return None
    match = re.search(rf'^bootwatch_{name}\{{entry="{re.escape(entry)}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else None


def vms_using(tree: Path) -> list[int]:
    """Live qemu processes with a file of ``tree`` open (the VMs started for it, wherever they
    were reparented); zombies have let go of everything and do not count."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "qemu-system-x86":
                continue
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if any(link.startswith(f"{tree}/") for link in links):
            found.append(int(pid))
    return found


def test_a_new_kernel_is_proved_and_the_metric_shows_it(boot_tree: BootTree, kernel: Kernel, busybox: None) -> None:
    needs_qemu()
    tree = boot_tree
    textfile = tree.root / "metrics" / "bootwatch.prom"
    good = busybox_initramfs(tree.root / "good.img", POWEROFF_INIT)
    # A well-formed image whose /init fails: the kernel panics. Only a boot shows it.
    failing = busybox_initramfs(tree.root / "failing.img", FAILING_INIT)
    vmlinuz = kernel.boot / f"vmlinuz-{kernel.version}"
    with DaemonProcess(config_for(tree, textfile, on_new_kernel=True, accel="tcg", timeout="90s"), tree.root) as daemon:
        daemon.wait_ready()
        add_entry(tree.boot, "new", vmlinuz, [good])
        proof = wait_for(lambda: stored(tree, "new.conf"), timeout=180, what="the proof of the new entry")
        assert proof["verdict"] == "passed", proof
        assert proof["accel"] == "tcg"
        assert [f["path"] for f in proof["files"]] == [str(tree.boot / "vmlinuz-new"),
                                                        str(tree.boot / "initrd-new-0.img")]
        assert "bootwatch-test: init ran" in Path(proof["log"]).read_text()
        wait_for(lambda: metric(textfile, "entry_proof_passed", "bls:new.conf") == 1, timeout=30,
                 what="bootwatch_entry_proof_passed 1")
        assert metric(textfile, "entry_last_proof_timestamp_seconds", "bls:new.conf") == pytest.approx(
            proof["started"], abs=0.001)
        assert "the boot proof of bls:new.conf passed [tcg," in daemon.output()

        # A second kernel whose /init fails: its proof fails, in the journal and the metric, and
        # the entry, which passes every other check, is BROKEN by the proof.
        add_entry(tree.boot, "broken", vmlinuz, [failing])
        bad = wait_for(lambda: stored(tree, "broken.conf"), timeout=180, what="the proof of the broken entry")
        assert bad["verdict"] == "failed" and bad["reason"].startswith("kernel panic"), bad
        wait_for(lambda: metric(textfile, "entry_proof_passed", "bls:broken.conf") == 0, timeout=30,
                 what="bootwatch_entry_proof_passed 0")
        status = tree.root / "run" / "status.json"
        wait_for(lambda: json.loads(status.read_text()).get("entry_states", {}).get("bls:broken.conf") == "BROKEN",
                 timeout=30, what="the entry BROKEN in the status file")
        assert json.loads(status.read_text())["entry_states"]["bls:new.conf"] != "BROKEN"  # its root is unknown here
        out = daemon.output()
        assert "the boot proof of bls:broken.conf failed [tcg," in out and "event=PROOF_FAILED" in out, out
        assert "event=ENTRY_BROKEN" in out and "boot proof of" in out.split("event=PROOF_FAILED")[1], out
        # The first entry was proved once: its files did not change.
        assert out.count("the boot proof of bls:new.conf") == 1
        assert vms_using(tree.root) == []
    assert daemon.proc.returncode == 0


def test_off_by_default_no_vm_runs(boot_tree: BootTree, kernel: Kernel, busybox: None) -> None:
    tree = boot_tree
    textfile = tree.root / "metrics" / "bootwatch.prom"
    image = busybox_initramfs(tree.root / "good.img", POWEROFF_INIT)
    with DaemonProcess(config_for(tree, textfile), tree.root) as daemon:
        daemon.wait_ready()
        add_entry(tree.boot, "new", kernel.boot / f"vmlinuz-{kernel.version}", [image])
        wait_for(lambda: "cached /initrd-new-0.img" in daemon.output() or "/initrd-new-0.img" in tree.cli("list")[1],
                 timeout=30, what="the new images cached")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # as long as a proof would take to start
            assert vms_using(tree.root) == []
            time.sleep(0.1)
        assert not (tree.root / "run" / "proofs").exists()
        assert "boot proof" not in daemon.output()
        assert "entry_proof" not in textfile.read_text()


def _ticking(tree: BootTree, kernel: Kernel, daemon: DaemonProcess) -> int:
    add_entry(tree.boot, "ticking", kernel.boot / f"vmlinuz-{kernel.version}",
              [busybox_initramfs(tree.root / "ticking.img", TICKING_INIT)])
    (vm,) = wait_for(lambda: vms_using(tree.root), timeout=60, what="the proof's VM running")
    time.sleep(1)
    assert daemon.proc.poll() is None
    return vm


def test_sigterm_during_a_proof_kills_and_reaps_the_vm(boot_tree: BootTree, kernel: Kernel, busybox: None) -> None:
    needs_qemu()
    tree = boot_tree
    textfile = tree.root / "metrics" / "bootwatch.prom"
    with DaemonProcess(config_for(tree, textfile, on_new_kernel=True, accel="tcg", timeout="10m"), tree.root) as daemon:
        daemon.wait_ready()
        vm = _ticking(tree, kernel, daemon)
        # A proof never holds up a batch: another kernel is cached while the VM runs.
        (tree.boot / "vmlinuz-meanwhile").write_bytes(b"\x02" * 4096)
        tree.write_entry("meanwhile", linux="/vmlinuz-meanwhile")
        wait_for(lambda: "/vmlinuz-meanwhile" in tree.cli("list")[1], timeout=30, what="the kernel cached meanwhile")
        assert vms_using(tree.root) == [vm]
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(30) == 0
        # The VM was killed at once, not abandoned with the job after the jobs' stop timeout.
        assert time.monotonic() - started < 5
        out = daemon.output()
        assert "abandoned" not in out and "the boot proof of bls:ticking.conf was cancelled" in out, out
    assert not os.path.exists(f"/proc/{vm}")
    assert vms_using(tree.root) == []
    assert stored(tree, "ticking.conf") is None  # a cancelled proof has no verdict


def test_a_reload_that_turns_proofs_off_kills_the_vm(boot_tree: BootTree, kernel: Kernel, busybox: None) -> None:
    needs_qemu()
    tree = boot_tree
    textfile = tree.root / "metrics" / "bootwatch.prom"
    config = config_for(tree, textfile, on_new_kernel=True, accel="tcg", timeout="10m")
    with DaemonProcess(config, tree.root) as daemon:
        daemon.wait_ready()
        vm = _ticking(tree, kernel, daemon)
        config.write_text(config.read_text().replace("on_new_kernel = true", "on_new_kernel = false"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_message("RELOADING", "1")
        daemon.wait_ready()
        wait_for(lambda: not os.path.exists(f"/proc/{vm}"), timeout=10, what="the VM gone")
        assert vms_using(tree.root) == [] and daemon.proc.poll() is None
        assert "boot proofs of new kernels: off" in daemon.output()


def test_without_qemu_the_proofs_are_not_run_said_once(boot_tree: BootTree, kernel: Kernel, busybox: None) -> None:
    tree = boot_tree
    textfile = tree.root / "metrics" / "bootwatch.prom"
    image = busybox_initramfs(tree.root / "good.img", POWEROFF_INIT)
    empty = tree.root / "no-qemu-here"
    empty.mkdir()
    vmlinuz = kernel.boot / f"vmlinuz-{kernel.version}"
    with DaemonProcess(config_for(tree, textfile, on_new_kernel=True), tree.root, env={"PATH": str(empty)}) as daemon:
        daemon.wait_ready()
        for name in ("one", "two"):
            add_entry(tree.boot, name, vmlinuz, [image])
            proof = wait_for(lambda: stored(tree, f"{name}.conf"), timeout=60, what=f"the proof of {name}")  # noqa: B023
            assert proof["verdict"] == "not run" and proof["reason"] == f"{QEMU} is not installed", proof
        wait_for(lambda: metric(textfile, "entry_last_proof_timestamp_seconds", "bls:two.conf"), timeout=30,
                 what="the metric of the second proof")
        assert metric(textfile, "entry_proof_passed", "bls:two.conf") is None
        out = daemon.output()
        assert out.count(f"boot proofs of new kernels are not run: {QEMU} is not installed") == 1, out
        assert "PROOF_FAILED" not in out and "JOB_FAILED" not in out and "Traceback" not in out
    assert daemon.proc.returncode == 0
