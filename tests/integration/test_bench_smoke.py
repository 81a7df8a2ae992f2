"""A smoke run of the benchmarks: ``bench/run.py --quick`` runs and reports every target.

Only that it runs: the figures of a quick run on a busy CI machine mean nothing, and benchmarks
are never timing assertions (see bench/run.py for the real measurement).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGET_ROWS = ("1", "2", "3-p50", "3-p99", "4", "5", "6-cpu", "6-rss", "7-cache", "7-list", "8", "9", "10")
BOOM_ROWS = ("7-cache", "7-list")  # bootwatch against boom-boot: not run without it


def test_quick_run_prints_every_target(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    table_rows = {line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ")}
    for row in TARGET_ROWS:
        assert row in table_rows, f"target {row} missing from the table:\n{proc.stdout}\n{proc.stderr}"
    assert "did not run" not in proc.stdout, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert [r["target"] for r in data["results"]] == list(TARGET_ROWS)
    assert data["quick"] is True and data["machine"]["nproc"] == str(os.cpu_count())
    for result in data["results"]:
        assert result["passed"] in (True, False) and result["bootwatch"] >= 0
    boom_installed = importlib.util.find_spec("boom") is not None
    for result in data["results"]:
        if result["target"] in BOOM_ROWS:
            assert (result["what"] == "not run: boom-boot not installed") is not boom_installed, result
        if result["target"] == "8":  # bootwatch scan against aide --check: not run without aide
            assert (result["what"] == "not run: aide not installed") is (shutil.which("aide") is None), result
        if result["target"] == "9":  # bootwatch prove against bare qemu: not run without qemu
            no_qemu = shutil.which("qemu-system-x86_64") is None
            assert (result["what"] == "not run: qemu-system-x86_64 not installed") is no_qemu, result
