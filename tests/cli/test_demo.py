"""``bootwatch demo`` plays its three scenes against the real daemon and cleans up after itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_demo_shows_cache_restore_and_repair(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TMPDIR=str(tmp_path))
    env.pop("BOOTWATCH_CONFIG", None)
    result = subprocess.run([sys.executable, "-m", "bootwatch", "demo"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"/vmlinuz-6\.1\.0-3: cached as image [0-9a-f]{40}", out), out
    assert "/vmlinuz-6.1.0-1: restored image" in out
    assert "is back: True" in out
    assert "was modified in the cache" in out and "again from the boot file" in out
    assert re.search(r"/vmlinuz-6\.1\.0-1\s+[0-9a-f]{12}\s+RESTORED", out), out
    assert list(tmp_path.iterdir()) == [], "the demo left its temp tree behind"
