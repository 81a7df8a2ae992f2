"""``bootwatch demo`` on a sample Debian 12 /boot (GRUB, no BLS): ``bootwatch entries`` lists the
GRUB entries, the real daemon caches what they name, restores a kernel a pinned 40_custom entry
still needs after update-grub dropped its own entries, repairs a rotten image, and the demo
cleans up after itself. The sample grub.cfg is checked against the real grub-mkconfig's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bootwatch.cli.demo import UNIT_DIRS, debian_grub_cfg, next_steps
from bootwatch.entries.grub import read_grub_config

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_demo_shows_grub_entries_cache_restore_and_repair(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TMPDIR=str(tmp_path))
    env.pop("BOOTWATCH_CONFIG", None)
    # Piped, stdout and stderr on one pipe (| less, 2>&1 | tee): what the demo and its children
    # print arrives in the order it happens.
    result = subprocess.run([sys.executable, "-m", "bootwatch", "demo"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=120)
    assert result.returncode == 0, result.stdout
    out = result.stdout
    sections = ["A throw-away /boot in", "== What bootwatch sees there", "   Sources:",
                "== bootwatch starts", "== A kernel is installed", "== The package manager removes kernel",
                "== ...but the pinned fallback entry still needs it", "== A cached image rots",
                "== What the cache holds now (bootwatch list):", "On this host: "]
    at = [out.find(section) for section in sections]
    assert -1 not in at and at == sorted(at), list(zip(sections, at))
    # The list table is the last section's, under its heading: nothing comes between them.
    assert "(bootwatch list):\n   PATH " in out, out
    # What to do next is true here: no unit is installed on the machine the tests run on.
    assert next_steps() in out and "systemctl enable" not in out
    # What bootwatch sees: GRUB's entries (10_linux's three and the pinned one), no BLS, every file
    # present and keyed without the /boot/ prefix of a root filesystem that holds /boot.
    assert "laid out as on a Debian 12 host: GRUB, no BLS entries" in out
    assert "a SAMPLE grub.cfg (not this host's)" in out
    assert re.search(r"grub\s+\S+/boot/grub/grub\.cfg\s+4 entries", out), out
    assert re.search(r"bls\s+\S+/boot/loader/entries\s+not there", out), out
    assert "  [grub] Debian GNU/Linux, with Linux 6.1.0-1" in out
    assert "  [grub] Debian GNU/Linux 6.1.0-1 (pinned fallback)" in out
    kernel = r"kernel\s+/boot/vmlinuz-6\.1\.0-2\s+root\s+/vmlinuz-6\.1\.0-2\s+not cached\s+present"
    assert re.search(kernel, out), out
    assert out.count("; complete") == 4 and "4 boot entries (grub 4)" in out
    # The daemon's scenes, from GRUB's entries alone.
    assert "(4 boot entries (grub 4); cache " in out
    assert re.search(r"/vmlinuz-6\.1\.0-3: cached as image [0-9a-f]{12}$", out, re.M), out
    assert "/vmlinuz-6.1.0-1: restored image" in out and "/initrd.img-6.1.0-1: restored image" in out
    assert "is back: True" in out
    assert "was modified in the cache" in out and "again from the boot file" in out
    # The stand-in images: a kernel bootwatch cannot check, a real cpio initramfs. UNKNOWN, and
    # no entry called BROKEN (an ERROR in the journal) for what is only the demo's sample.
    assert "4 boot entries (grub 4): 4 UNKNOWN" in out, out
    assert "BROKEN" not in out and "ERROR" not in out, out
    assert re.search(r"/vmlinuz-6\.1\.0-1\s+[0-9a-f]{12}\s+RESTORED\s+1", out), out
    assert list(tmp_path.iterdir()) == [], "the demo left its temp tree behind"


@pytest.mark.root
def test_the_sample_grub_cfg_has_the_entries_the_real_grub_mkconfig_writes(tmp_path: Path) -> None:
    """Debian's own grub-mkconfig (tests/realboot/grub_mkconfig.py) for two real kernel packages,
    /boot on the root filesystem, GRUB_DISABLE_RECOVERY=true: the demo's sample for the same
    kernel versions and root UUID reads as the same entries (titles, ids, files, options). The
    real /boot also holds amd-ucode.img, which 10_linux puts first on every initrd line."""
    from realboot.grub_mkconfig import Layout, Unavailable, cached_kernels, missing_prerequisite, run_grub_mkconfig
    if missing_prerequisite() is not None:
        pytest.skip(f"real grub-mkconfig: {missing_prerequisite()}")
    try:
        kernels = cached_kernels(2)
    except Unavailable as e:
        pytest.skip(f"real grub-mkconfig: {e}")
    real = run_grub_mkconfig(Layout.BOOT_ON_ROOT, kernels, tmp_path / "real",
                             extra_default='GRUB_DISABLE_RECOVERY="true"\n')
    versions = tuple(k.version for k in reversed(kernels))  # newest last, as the demo takes them
    sample = tmp_path / "sample" / "grub.cfg"
    sample.parent.mkdir()
    sample.write_text(debian_grub_cfg(versions, real.root_uuid))

    def entries(path: Path) -> list[tuple[object, ...]]:
        result = read_grub_config(path)
        assert result.unknown is None, result.unknown
        return [(e.id, e.title, e.version, e.options, [(f.path, f.role, f.partition) for f in e.files
                                                       if f.path != "/boot/amd-ucode.img"]) for e in result.entries]

    assert entries(sample) == entries(real.grub_cfg)
    assert len(entries(sample)) == 3


@pytest.mark.parametrize("args", [("--boot-dir", "/boot", "demo"), ("demo", "--cache-dir", "/var/lib/bootwatch"),
                                  ("--config", "/nonexistent.toml", "demo"), ("demo", "--boot-dir", "/nonexistent")])
def test_demo_refuses_the_directories_it_would_not_use(args: tuple[str, ...], tmp_path: Path) -> None:
    """The demo works on its own throw-away tree: a --boot-dir, --cache-dir or --config given to
    it is refused (usage, exit 2) before anything is read or built, not silently ignored."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TMPDIR=str(tmp_path))
    env.pop("BOOTWATCH_CONFIG", None)
    result = subprocess.run([sys.executable, "-m", "bootwatch", *args], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    option = next(a for a in args if a.startswith("--"))
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"bootwatch: demo: {option} cannot be used") and "throw-away" in first, result.stderr
    assert result.stdout == "" and list(tmp_path.iterdir()) == [], "the demo started"


def test_next_steps_say_whether_the_unit_is_installed(tmp_path: Path) -> None:
    """The demo's last words: the service's unit where systemd finds it, or how to run without it."""
    dirs = (tmp_path / "etc", tmp_path / "usr-lib")
    assert "not installed" in next_steps(dirs) and "bootwatch run" in next_steps(dirs)
    dirs[1].mkdir()
    (dirs[1] / "bootwatch.service").write_text("[Service]\n")
    assert "is installed" in next_steps(dirs) and "journalctl -u bootwatch" in next_steps(dirs)
    assert all("systemctl enable" not in text for text in (next_steps(dirs), next_steps(dirs[:1])))
    assert Path("/usr/lib/systemd/system") in UNIT_DIRS and Path("/etc/systemd/system") in UNIT_DIRS
