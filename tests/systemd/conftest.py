"""Fixtures for the real-systemd tests: a booted container with bootwatch installed as a unit.

The container boots a cached Debian bookworm tree (see nspawn_rootfs) with systemd 252 as PID 1.
bootwatch goes in the way a user installs it: wheels into a venv, ``contrib/systemd`` unit and
catalog into /etc/systemd/system and the catalog directory, the config into /etc/bootwatch. The
only test-specific change to the shipped unit is a drop-in (see TEST_DROPIN).

Prerequisites (root, systemd-nspawn, mmdebstrap) are checked first: without them every test here
skips with the reason, unless BOOTWATCH_REQUIRE_NSPAWN=1 (set it in CI), which turns a missing
prerequisite into an error so that a broken CI setup cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from nspawn_container import Container, booted_container, sigterm_raises
from nspawn_rootfs import RootfsSpec, cached_rootfs
from nspawn_testbed import (
    ENTRY,
    INITRAMFS,
    INSTALL_SCRIPT,
    KERNEL,
    STAGE,
    TEST_DROPIN,
    stage_bootwatch,
)

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("BOOTWATCH_TEST_CACHE", "/var/cache/bootwatch-tests"))
REQUIRED_TOOLS = ("systemd-nspawn", "mmdebstrap", "nsenter", "unshare")
INSTALL_HINT = "apt-get install -y --no-install-recommends systemd-container mmdebstrap"

def _missing_prerequisite() -> str | None:
    if os.environ.get("BOOTWATCH_SKIP_NSPAWN") == "1":
        return "BOOTWATCH_SKIP_NSPAWN=1"
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, cgroups, mounts)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed ({INSTALL_HINT})"
    return None


@pytest.fixture(scope="session")
def nspawn_prerequisites() -> None:
    reason = _missing_prerequisite()
    if reason is None:
        return
    if os.environ.get("BOOTWATCH_REQUIRE_NSPAWN") == "1":
        pytest.fail(f"real-systemd tests required (BOOTWATCH_REQUIRE_NSPAWN=1), but {reason}")
    pytest.skip(f"real-systemd tests: {reason}")


@pytest.fixture(scope="session")
def debian_rootfs(nspawn_prerequisites: None) -> Path:
    return cached_rootfs(RootfsSpec(), CACHE_DIR)


def _stage(stage: Path) -> None:
    """Everything the container needs from the host, in one directory bound read-only."""
    stage_bootwatch(REPO, stage)
    (stage / "50-test.conf").write_text(TEST_DROPIN)
    (stage / "install.sh").write_text(textwrap.dedent(INSTALL_SCRIPT))
    boot = stage / "boot"
    boot.mkdir()
    (boot / "vmlinuz-T").write_bytes(KERNEL)
    (boot / "initramfs-T.img").write_bytes(INITRAMFS)
    (boot / "x.conf").write_text(ENTRY)


@pytest.fixture(scope="module")
def container(debian_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A booted container with bootwatch installed (not started). Logs are kept in the tmp dir."""
    work = tmp_path_factory.mktemp("nspawn")
    stage = work / "stage"
    stage.mkdir()
    _stage(stage)
    machine = f"bwtest{os.getpid()}"
    with sigterm_raises(), booted_container(
            debian_rootfs, machine=machine, log=work / "nspawn.log",
            nspawn_args=[f"--bind-ro={stage}:{STAGE}", "--tmpfs=/boot:mode=0755"]) as ct:
        try:
            ct.run(["/bin/sh", "-eu", f"{STAGE}/install.sh", STAGE], timeout=180)
            yield ct
        finally:
            # Kept for whoever debugs a failure: the whole boot's journal, oldest first.
            (work / "journal.txt").write_text(ct.run(
                ["journalctl", "-b", "--no-pager", "-o", "short-monotonic"], check=False).stdout)
