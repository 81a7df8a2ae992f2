"""Target 9: ``bootwatch prove`` against a bare ``qemu-system-x86_64`` boot of the same pair to the same point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import REPO_ROOT, Result, best_interleaved, temp_dir, warm, write_config
from bench.sizes import Sizes
from bootwatch.prove.cmdline import proof_cmdline
from bootwatch.prove.vm import QEMU, Accel, build_argv, memory_for

RULE = "ratio <= 1.2"
OPTIONS = "root=UUID=0b5c1d1e-7f1c-4c55-9d2f-1f0c9a7d3e11 ro quiet"
BREAK_POINT = "Spawning shell within the initramfs"


def _pair() -> tuple[str, Path, Path]:
    """Debian's newest cloud kernel and the initramfs Debian's mkinitramfs makes for it (the
    test fixtures' cache: tests/realboot)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from realboot.grub_mkconfig import extracted_kernel, kernel_debs
    from realboot.initramfs_build import mkinitramfs_image
    deb = kernel_debs(1)[0]
    kernel = extracted_kernel(deb)
    return kernel.version, kernel.boot / f"vmlinuz-{kernel.version}", mkinitramfs_image(deb, ("crc7",))


def _not_run(why: str, hint: str) -> list[Result]:
    return [Result("9", f"not run: {why}", 0.0, None, "s", None, RULE, False, [hint])]


def target_prove(sizes: Sizes) -> list[Result]:
    """``bootwatch prove ENTRY`` (the whole CLI process: inventory, checks, VM, console, result
    files) under TCG, against ``qemu-system-x86_64`` started with the same argv on the same files
    and left to run until the guest ends itself after the same break point (initramfs-tools'
    ``break=mount`` with ``panic=-1``), its console read to the end."""
    if shutil.which(QEMU) is None:
        return _not_run(f"{QEMU} not installed", "apt-get install qemu-system-x86 (tests/run.sh installs it)")
    if os.geteuid() != 0:
        return _not_run("needs root (mkinitramfs in a chroot)", "run bench/run.py as root")
    version, vmlinuz, initrd = _pair()
    with temp_dir("prove") as tmp:
        boot = tmp / "boot"
        (boot / "loader" / "entries").mkdir(parents=True)
        shutil.copyfile(vmlinuz, boot / f"vmlinuz-{version}")
        shutil.copyfile(initrd, boot / f"initrd.img-{version}")
        (boot / "loader" / "entries" / "debian.conf").write_text(
            f"title Debian\nlinux /vmlinuz-{version}\ninitrd /initrd.img-{version}\noptions {OPTIONS}\n")
        for path in boot.iterdir():
            if path.is_file():
                warm(path)
        config = write_config(tmp / "bootwatch.toml", boot, tmp / "cache", tmp / "run")
        prove_argv = [sys.executable, "-m", "bootwatch", "--config", str(config), "prove", "--accel", "tcg",
                      "--json", "debian.conf"]
        qemu = shutil.which(QEMU)
        assert qemu is not None
        bare_argv = build_argv(qemu, Accel.TCG, str(boot / f"vmlinuz-{version}"),
                               str(boot / f"initrd.img-{version}"), proof_cmdline(OPTIONS),
                               memory_for((boot / f"initrd.img-{version}").stat().st_size))
        outputs: dict[str, str] = {}

        def prove() -> None:
            proc = subprocess.run(prove_argv, capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1"})
            outputs["prove"] = proc.stdout
            if proc.returncode != 0:
                raise RuntimeError(f"target 9: bootwatch prove failed ({proc.returncode}): {proc.stdout}{proc.stderr}")

        def bare() -> None:
            proc = subprocess.run(bare_argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
            outputs["bare"] = proc.stdout.decode("utf-8", "replace")

        best = best_interleaved({"prove": prove, "bare": bare}, sizes.repeat)
        proof = json.loads(outputs["prove"])[0]
        if proof["verdict"] != "passed" or BREAK_POINT not in outputs["bare"]:
            raise RuntimeError(f"target 9: not both at the break point: {proof}")
    ratio = best["prove"] / best["bare"]
    return [Result("9", f"prove {version} + its mkinitramfs image (TCG) vs bare qemu to the same point",
                   best["prove"], best["bare"], "s", ratio, RULE, ratio <= 1.2,
                   [f"prove: the whole CLI process with --accel tcg; its proof: {proof['reason']}, "
                    f"{proof['seconds']:.2f} s in the VM (last run)",
                    "bare: qemu-system-x86_64 with the argv bootwatch builds, until the guest ends itself "
                    "(panic=-1 after initramfs-tools' break=mount), its console read"])]
