"""The real prometheus-node-exporter reads bootwatch's textfile and serves its metrics.

node_exporter parses every ``*.prom`` file at each scrape and reports
``node_textfile_scrape_error 1`` (and drops the file) if one does not parse, so a clean scrape
that contains the bootwatch samples shows that the file is valid for the real consumer.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootwatch.cache.operations import BootCache
from bootwatch.daemon.metrics import Metrics
from bootwatch.health.model import EntryState

BINARY = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def node_exporter(textfile_dir: Path, log: Path) -> Iterator[str]:
    """Run node_exporter with only the textfile collector; yield its /metrics URL; always kill it."""
    assert BINARY is not None
    for _attempt in range(3):  # the free port may be taken between our probe and its bind
        port = free_port()
        with open(log, "wb") as log_file:
            proc = subprocess.Popen([BINARY, f"--web.listen-address=127.0.0.1:{port}",
                                     "--collector.disable-defaults", "--collector.textfile",
                                     f"--collector.textfile.directory={textfile_dir}"],
                                    stdout=log_file, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            if _wait_ready(proc, url):
                yield url
                return
        finally:
            proc.kill()
            proc.wait()
    pytest.fail(f"node_exporter did not start: {log.read_text(errors='replace')}")


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(urllib.error.URLError, ConnectionError), \
                urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
        time.sleep(0.1)
    return False


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def find(text: str, line_start: str) -> tuple[str, float] | None:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return line, float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.skipif(BINARY is None, reason="prometheus-node-exporter is not installed "
                                           "(Debian package prometheus-node-exporter)")
def test_node_exporter_serves_bootwatch_metrics(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    entries = boot / "loader" / "entries"
    entries.mkdir(parents=True)
    (boot / "vmlinuz-x").write_bytes(b"x" * 2048)
    (entries / "x.conf").write_text("title x\nlinux /vmlinuz-x\n")
    cache = BootCache(boot, entries, tmp_path / "cache")
    cache.add(["/vmlinuz-x"])
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    metrics = Metrics(textdir / "bootwatch.prom")
    metrics.record_job("clean", 0.125, True)
    metrics.record_entry_states({EntryState.BOOTABLE: 1, EntryState.BROKEN: 1})
    (boot / "grub").mkdir()
    (boot / "grub" / "grub.cfg").write_text("menuentry 'Debian GNU/Linux' { linux /vmlinuz-x root=/dev/sda1 }\n")
    metrics.write(cache, pins_count=0)

    with node_exporter(textdir, tmp_path / "node_exporter.log") as url:
        text = scrape(url)
        assert find(text, "node_textfile_scrape_error") == ("node_textfile_scrape_error 0", 0.0), text
        assert find(text, 'bootwatch_images{state="CACHED"}')[1] == 1
        assert find(text, "bootwatch_cache_bytes")[1] == 2048
        assert find(text, 'bootwatch_job_runs_total{job="clean"}')[1] == 1
        assert "# TYPE bootwatch_job_runs_total counter" in text
        assert find(text, 'bootwatch_entries{source="bls"}')[1] == 1
        assert find(text, 'bootwatch_entries{source="grub"}')[1] == 1
        assert find(text, "bootwatch_entries_none")[1] == 0
        assert find(text, "bootwatch_entry_sources_unknown")[1] == 0
        # Every health state has its sample, zero included.
        assert [find(text, f'bootwatch_entries_by_state{{state="{state}"}}')[1]
                for state in ("BOOTABLE", "AT_RISK", "UNKNOWN", "BROKEN")] == [1, 0, 0, 1]
        assert "# TYPE bootwatch_entries_by_state gauge" in text
        # A rewrite is seen at the next scrape (the file is replaced, never half-written).
        metrics.record_job("clean", 0.25, False)
        metrics.write(cache, pins_count=2)
        text = scrape(url)
        assert find(text, 'bootwatch_job_errors_total{job="clean"}')[1] == 1
        assert find(text, "bootwatch_pins")[1] == 2
        assert find(text, "node_textfile_scrape_error")[1] == 0
