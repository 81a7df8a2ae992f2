"""``bootwatch prove`` takes its bounds from ``[prove]`` (the daemon's proof job's too) unless the
command line gives them: one set of defaults."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_bootwatch
from realboot.grub_mkconfig import Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import busybox_initramfs, static_busybox

QEMU = "qemu-system-x86_64"
TICKING_INIT = """#!/bin/busybox sh
while :; do /bin/busybox echo tick; /bin/busybox sleep 1; done
"""


@pytest.mark.slow
def test_the_configured_time_bound_and_acceleration_apply(tmp_path: Path, bootwatch_config: Path) -> None:
    """A VM whose /init never ends (it ticks every second) runs until the configured bound."""
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    try:
        kernel = extracted_kernel(kernel_debs(1)[0])
        static_busybox()
    except Unavailable as e:
        pytest.skip(str(e))
    boot = tmp_path / "boot"
    (boot / "loader" / "entries").mkdir(parents=True)
    shutil.copyfile(kernel.boot / f"vmlinuz-{kernel.version}", boot / "vmlinuz")
    busybox_initramfs(boot / "initrd.img", TICKING_INIT)
    (boot / "loader" / "entries" / "ticking.conf").write_text("title t\nlinux /vmlinuz\ninitrd /initrd.img\n")
    bootwatch_config.write_text('[prove]\ntimeout = "3s"\naccel = "tcg"\n')
    env = {"RUNTIME_DIRECTORY": str(tmp_path / "run")}
    rc, out, err = run_bootwatch(boot, tmp_path / "cache", "prove", "--json", "ticking.conf", env=env, timeout=120)
    (proof,) = json.loads(out)
    assert proof["accel"] == "tcg", proof
    _ended_by(proof, rc, 3)
    # The command line wins.
    rc, out, err = run_bootwatch(boot, tmp_path / "cache", "prove", "--json", "--timeout", "2", "ticking.conf",
                                 env=env, timeout=120)
    (proof,) = json.loads(out)
    _ended_by(proof, rc, 2)


def _ended_by(proof: dict[str, object], rc: int, bound: int) -> None:
    """The VM, which never ends by itself, was stopped at the bound: before the kernel ran /init
    (failed: not within the bound) or after, with /init ticking (passed: it ran /init). Which of
    the two depends on how fast TCG runs the kernel on this machine; the bound holds either way."""
    if rc == 1:
        assert proof["verdict"] == "failed" and str(proof["reason"]).endswith(f"within {bound} s"), proof
    else:
        assert rc == 0 and proof["verdict"] == "passed", proof
    # Stopped at the bound, not by the test's own timeout (kill and reap take well under 5 s).
    assert isinstance(proof["seconds"], (int, float)) and bound - 0.5 <= proof["seconds"] < bound + 5, proof
