"""contrib/systemd: the unit passes systemd-analyze verify, the catalog covers every Event. (The
package-manager hooks are tests/integration/test_hooks.py.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bootwatch.log import Event

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "contrib" / "systemd" / "bootwatch.service"
CATALOG = REPO / "contrib" / "systemd" / "bootwatch.catalog"


def unit_settings(text: str) -> dict[tuple[str, str], list[str]]:
    """``(section, key) -> [values]`` of a unit file; repeated keys accumulate."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


# --- the unit ---------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart= exists; bootwatch need not be installed for this test.
    text = UNIT.read_text()
    # No directory: systemd's search path finds the packages' /usr/bin and pip's /usr/local/bin.
    assert "ExecStart=bootwatch run\n" in text
    copy = tmp_path / "bootwatch.service"
    copy.write_text(text.replace("ExecStart=bootwatch run", f"ExecStart={shutil.which('true')}"))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, SYSTEMD_LOG_LEVEL="info"))
    assert result.returncode == 0, result.stderr
    # Unknown or invalid settings are only warnings (exit status 0), naming the file: none.
    complaints = [line for line in result.stderr.splitlines() if "bootwatch.service" in line]
    assert complaints == []


def test_unit_settings() -> None:
    settings = unit_settings(UNIT.read_text())
    service = {key: values for (section, key), values in settings.items()
               if section == "Service"}
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30s",
        "Restart": "on-failure", "ExecReload": "/bin/kill -HUP $MAINPID",
        "StateDirectory": "bootwatch", "RuntimeDirectory": "bootwatch",
        "IOSchedulingClass": "idle", "ProtectSystem": "strict", "PrivateTmp": "yes",
        "NoNewPrivileges": "yes", "LimitCORE": "0", "TimeoutStopSec": "15s",
        "RestrictAddressFamilies": "AF_UNIX", "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    assert set(service["CapabilityBoundingSet"][0].split()) == \
        {"CAP_SYS_ADMIN", "CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE", "CAP_LEASE"}
    writable = service["ReadWritePaths"][0].split()
    assert {p.lstrip("-") for p in writable} >= {"/boot", "/var/lib/bootwatch"}
    assert service["DeviceAllow"] == ["/dev/loop-control rw", "block-loop rw",
                                      "block-blkext rw"]


# --- the catalog ------------------------------------------------------------------------------

def parse_catalog(text: str) -> dict[str, tuple[dict[str, str], str]]:
    """Strictly: ``-- <id>`` lines, a header block, a blank line, a body. Ids once each."""
    entries: dict[str, tuple[dict[str, str], str]] = {}
    blocks = re.split(r"^-- ", text, flags=re.M)
    preamble = blocks[0]
    assert all(not line or line.startswith("#") for line in preamble.splitlines())
    for block in blocks[1:]:
        first, _, rest = block.partition("\n")
        assert re.fullmatch(r"[0-9a-f]{32}", first), f"bad id line: -- {first}"
        assert first not in entries, f"duplicate entry {first}"
        head, sep, body = rest.partition("\n\n")
        assert sep, f"{first}: no blank line after the headers"
        headers = {}
        for line in head.splitlines():
            key, colon, value = line.partition(": ")
            assert colon and re.fullmatch(r"[A-Z][A-Za-z-]+", key), f"{first}: bad {line!r}"
            headers[key] = value
        assert body.strip(), f"{first}: no text"
        entries[first] = (headers, body)
    return entries


def test_catalog_has_one_entry_per_event() -> None:
    entries = parse_catalog(CATALOG.read_text())
    assert set(entries) == {event.message_id for event in Event}
    for message_id, (headers, body) in entries.items():
        assert set(headers) == {"Subject", "Defined-By", "Support", "Documentation"}, message_id
        assert headers["Defined-By"] == "bootwatch"
        # Only fields that bootwatch sets (or journald's own) can be substituted.
        for field in re.findall(r"@([A-Z_]+)@", headers["Subject"] + body):
            assert field.startswith("BOOTWATCH_"), (message_id, field)


@pytest.mark.skipif(shutil.which("journalctl") is None, reason="no journalctl")
def test_journalctl_reads_the_catalog(tmp_path: Path) -> None:
    catalog_dir = tmp_path / "usr" / "lib" / "systemd" / "catalog"
    catalog_dir.mkdir(parents=True)
    (tmp_path / "var" / "lib" / "systemd" / "catalog").mkdir(parents=True)
    shutil.copy(CATALOG, catalog_dir)
    subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"], check=True,
                   capture_output=True, timeout=60)
    listing = subprocess.run(["journalctl", f"--root={tmp_path}", "--list-catalog"],
                             check=True, capture_output=True, text=True, timeout=60).stdout
    listed = dict(line.split(" ", 1) for line in listing.splitlines())
    entries = parse_catalog(CATALOG.read_text())
    assert set(listed) == set(entries)
    for message_id, (headers, _body) in entries.items():
        assert listed[message_id] == f"bootwatch: {headers['Subject']}"
