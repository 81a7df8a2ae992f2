"""The image facts memo is shared: the daemon's health pass checks the images, and ``bootwatch
entries`` then reports every entry's health from what it saved, reading no image.

Real parts: a real ``bootwatch run`` (daemonproc), a real Debian cloud kernel with the initramfs
Debian's mkinitramfs makes for it, and ``bootwatch entries --json`` in a new interpreter whose
opens are recorded by a Python audit hook.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, subprocess_env
from daemonproc import DaemonProcess, write_config
from polling import wait_for
from realboot.grub_mkconfig import Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import mkinitramfs_image

from bootwatch import scanproof
from bootwatch.health.facts import FACTS_NAME

pytestmark = [pytest.mark.slow, pytest.mark.root]

ENTRIES = r"""
import json, os, sys
images = set(sys.argv[2:])
opened = []
sys.addaudithook(lambda event, args: opened.append(os.fsdecode(args[0]))
                 if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) else None)
import bootwatch.cli.main
rc = bootwatch.cli.main.main(["--config", sys.argv[1], "entries", "--json"])
sys.stdout.flush()
print(json.dumps({"rc": rc, "opened": sorted({p for p in opened if p in images})}), file=sys.stderr)
"""


def _entries(config: Path, images: list[Path]) -> tuple[dict[str, Any], list[str]]:
    """``bootwatch entries --json``: its report, and the images it opened."""
    proc = subprocess.run([sys.executable, "-c", ENTRIES, str(config), *map(str, images)], capture_output=True,
                          text=True, env=subprocess_env(), cwd=REPO_ROOT, timeout=120, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    counted = json.loads(proc.stderr.splitlines()[-1])
    assert counted["rc"] in (0, 1), proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report, counted["opened"]


def test_bootwatch_entries_reads_no_image_the_daemon_checked(tmp_path: Path) -> None:
    try:
        deb = kernel_debs(1)[0]
        kernel = extracted_kernel(deb)
        initrd = mkinitramfs_image(deb)
    except Unavailable as e:
        pytest.skip(str(e))
    boot = tmp_path / "boot"
    (boot / "loader" / "entries").mkdir(parents=True)
    images = [Path(shutil.copyfile(kernel.boot / f"vmlinuz-{kernel.version}", boot / f"vmlinuz-{kernel.version}")),
              Path(shutil.copyfile(initrd, boot / f"initrd.img-{kernel.version}"))]
    (boot / "loader" / "entries" / "debian.conf").write_text(
        f"title Debian\nversion {kernel.version}\nlinux /{images[0].name}\ninitrd /{images[1].name}\n"
        "options root=UUID=0b5c1d1e-7f1c-4c55-9d2f-1f0c9a7d3e11 ro quiet\n")
    run = tmp_path / "run"
    config = write_config(tmp_path / "bootwatch.toml", boot, tmp_path / "cache", run)
    # Facts are remembered for images changed longer ago than the racy margin.
    newest = max(p.stat().st_ctime_ns for p in images)
    time.sleep(max(0.0, (newest + scanproof.RACY_MARGIN_NS - time.time_ns()) / 1e9 + 0.1))

    with DaemonProcess(config, tmp_path) as daemon:
        daemon.wait_ready()

        def saved() -> bool:
            try:
                memo = json.loads((run / FACTS_NAME).read_text())
            except (OSError, ValueError):
                return False
            return {i["path"] for i in memo["images"]} >= set(map(str, images))

        wait_for(saved, timeout=120, what="the daemon's health pass saving the images' facts")
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.output()

    report, opened = _entries(config, images)
    assert opened == []
    (entry,) = report["entries"]
    assert entry["state"] in ("BOOTABLE", "UNKNOWN"), entry  # the root it names is no root of this host
    assert not [f for f in entry["findings"] if f["check"] in ("file", "format", "kernel-version")], entry

    # The same command without the daemon's memo reads both images (the hook sees what is read).
    os.unlink(run / FACTS_NAME)
    again, opened = _entries(config, images)
    assert sorted(opened) == sorted(map(str, images))
    assert again["entries"] == report["entries"]
