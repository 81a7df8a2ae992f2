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

from bootwatch.cli.demo import debian_grub_cfg
from bootwatch.entries.grub import read_grub_config

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_demo_shows_grub_entries_cache_restore_and_repair(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TMPDIR=str(tmp_path))
    env.pop("BOOTWATCH_CONFIG", None)
    result = subprocess.run([sys.executable, "-m", "bootwatch", "demo"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
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
    assert re.search(r"/vmlinuz-6\.1\.0-3: cached as image [0-9a-f]{40}", out), out
    assert "/vmlinuz-6.1.0-1: restored image" in out and "/initrd.img-6.1.0-1: restored image" in out
    assert "is back: True" in out
    assert "was modified in the cache" in out and "again from the boot file" in out
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
