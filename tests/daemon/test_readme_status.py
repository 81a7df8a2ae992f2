"""The README's teaser is what ``bootwatch status`` really prints: the test takes the block from
the README itself and compares it, line by line, with the output of ``bootwatch status`` next to a
real ``bootwatch run`` (tests/daemonproc.py) on real images (the real kernel and mkinitramfs
image of tests/daemon/test_service_health.py, a real loop-mounted root with its modules), one
entry's initramfs cut short as a full /boot leaves it. Only what differs from host to host is
put aside: the PID, the times, image ids and the two directories (the README's are the defaults)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from daemonproc import REPO_ROOT, DaemonProcess, run_with_config, write_config
from realboot.grub_mkconfig import Kernel
from test_service_health import real_pair, root_device, truncate_in_place, wait_status

pytestmark = [pytest.mark.slow, pytest.mark.root]

__all__ = ["real_pair", "root_device"]  # fixtures, used by name

README = REPO_ROOT / "README.md"
TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
PID = re.compile(r"\(pid \d+\)")
# Image ids: the real mkinitramfs image (and so the cut one) differs from build to build.
IMAGE_ID = re.compile(r"\b[0-9a-f]{40}\b|\b[0-9a-f]{12}\b")


def readme_teaser() -> list[str]:
    """The lines of the README's first code block that shows ``$ bootwatch status``, the command
    line itself left out."""
    blocks = re.findall(r"^```\n(.*?)^```$", README.read_text(), re.M | re.S)
    [block] = [b for b in blocks if b.startswith("$ bootwatch status\n")][:1]
    return block.splitlines()[1:]


def normalized(lines: list[str], boot: str, cache: str) -> list[str]:
    out = []
    for line in lines:
        line = IMAGE_ID.sub("<id>", TIME.sub("<time>", PID.sub("(pid <pid>)", line)))
        out.append(line.replace(cache, "/var/lib/bootwatch/cache").replace(boot, "/boot"))
    return out


def test_the_readme_teaser_is_what_bootwatch_status_prints(
        boot_tree: Any, real_pair: tuple[Kernel, Path], root_device: str) -> None:
    tree = boot_tree
    kernel, initramfs = real_pair
    for name in ("stable", "update"):
        shutil.copyfile(kernel.boot / f"vmlinuz-{kernel.version}", tree.boot / f"vmlinuz-{name}")
        shutil.copyfile(initramfs, tree.boot / f"initrd-{name}.img")
        tree.write_entry(name, [("options", f"root={root_device} ro quiet")], title=f"Linux {name}",
                         linux=f"/vmlinuz-{name}", initrd=[f"/initrd-{name}.img"])
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"})
    with DaemonProcess(config, tree.root) as daemon:
        daemon.wait_ready(timeout=60)
        truncate_in_place(tree.boot / "initrd-update.img")
        wait_status(daemon, lambda s: "1 BROKEN" in s)
        result = run_with_config(config, "status")
        assert result.returncode == 0, result.stderr
    real = normalized(result.stdout.splitlines(), str(tree.boot), str(tree.cache))
    teaser = normalized(readme_teaser(), "/boot", "/var/lib/bootwatch/cache")
    assert teaser == real, "README's teaser:\n" + "\n".join(teaser) + "\n\nbootwatch status:\n" + "\n".join(real)
