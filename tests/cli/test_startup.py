"""The everyday commands start without the daemon's stack.

``bootwatch list``, ``add`` and ``scan`` (which the kernel-install plugin runs on every kernel
install) must not import APScheduler, watchdog or sdnotify, nor anything of ``bootwatch.daemon``:
those are the service's, and loading them is most of a short command's run time. Each command
runs here as a real child under ``python -X importtime`` on a real boot tree, and the modules it
imported are read from that report. ``bootwatch entries`` (what a user types to see what
bootwatch sees) is one of them.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

BootTree = Any  # conftest.BootTree

pytestmark = pytest.mark.slow  # real command-line runs, one interpreter start each

# The daemon's own packages: third-party ones by their top-level name, and bootwatch's service.
DAEMON_ONLY = ("apscheduler", "watchdog", "sdnotify", "bootwatch.daemon")

COMMANDS = [
    ("add", "/vmlinuz-6.1.0", "/initramfs-6.1.0.img"),
    ("list",),
    ("list", "--json"),
    ("entries",),
    ("entries", "--json"),
    ("scan",),  # the first scan caches what the entries name
    ("scan", "--quiet"),  # and a second finds the tree unchanged
]


def imported_modules(importtime_report: str) -> set[str]:
    """The module names in the stderr of ``python -X importtime``."""
    modules = set()
    for line in importtime_report.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                modules.add(name)
    return modules


def run_with_importtime(boot_tree: BootTree, *args: str) -> tuple[int, str, set[str]]:
    argv = [sys.executable, "-X", "importtime", "-m", "bootwatch", "--boot-dir", str(boot_tree.boot),
            "--cache-dir", str(boot_tree.cache), *args]
    proc = subprocess.run(argv, env=boot_tree.env(), cwd=boot_tree.root, capture_output=True, text=True,
                          timeout=60)
    return proc.returncode, proc.stderr, imported_modules(proc.stderr)


@pytest.fixture
def small_boot(boot_tree: BootTree) -> BootTree:
    for version in ("6.1.0", "6.2.0"):
        boot_tree.write_kernel(version, size=64 * 1024)
        boot_tree.write_entry(f"linux-{version}", linux=f"/vmlinuz-{version}", initrd=[f"/initramfs-{version}.img"])
    return boot_tree


def test_the_importtime_report_is_read(small_boot: BootTree) -> None:
    # The check below means something only if the report names what the command really loads.
    small_boot.cache.mkdir(mode=0o700)
    rc, err, modules = run_with_importtime(small_boot, "list")
    assert rc == 0, err
    assert {"bootwatch.cli.main", "bootwatch.cache.operations", "json"} <= modules, sorted(modules)


def test_everyday_commands_import_nothing_of_the_daemon(small_boot: BootTree) -> None:
    for args in COMMANDS:
        rc, err, modules = run_with_importtime(small_boot, *args)
        assert rc == 0, (args, err[-2000:])
        loaded = sorted(m for m in modules if m.split(".")[0] in DAEMON_ONLY or m.startswith(DAEMON_ONLY))
        assert not loaded, f"bootwatch {' '.join(args)} imported {loaded}"
    # The scans did their work: both kernels and both initramfs images are cached.
    assert len(small_boot.read_index()["index"]) == 4
