"""``bootwatch demo`` lists a sample Debian 12 /boot with ``bootwatch entries``, then plays its three
scenes against the real daemon, and cleans up after itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bootwatch.cli.demo import DEBIAN_KERNELS, debian_grub_cfg
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
    # The Debian 12 sample: GRUB's entries seen, no BLS, every file present and keyed without /boot.
    assert "What bootwatch sees on a Debian 12 host: GRUB, no BLS entries" in out
    assert "A SAMPLE /boot in " in out and "(not this host's)" in out
    assert re.search(r"grub\s+\S+/debian12-sample/boot/grub/grub\.cfg\s+3 entries", out), out
    assert re.search(r"bls\s+\S+/debian12-sample/boot/loader/entries\s+not there", out), out
    assert "  [grub] Debian GNU/Linux, with Linux 6.1.0-17-amd64" in out
    kernel = r"kernel\s+/boot/vmlinuz-6\.1\.0-18-amd64\s+root\s+/vmlinuz-6\.1\.0-18-amd64\s+not cached\s+present"
    assert re.search(kernel, out), out
    assert out.count("; complete") == 3 and "3 boot entries (grub 3)" in out
    # The daemon's scenes.
    assert re.search(r"/vmlinuz-6\.1\.0-3: cached as image [0-9a-f]{40}", out), out
    assert "/vmlinuz-6.1.0-1: restored image" in out
    assert "is back: True" in out
    assert "was modified in the cache" in out and "again from the boot file" in out
    assert re.search(r"/vmlinuz-6\.1\.0-1\s+[0-9a-f]{12}\s+RESTORED", out), out
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
    assert len(DEBIAN_KERNELS) == 2
