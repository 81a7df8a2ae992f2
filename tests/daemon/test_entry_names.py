"""An entry's ENTRY_BROKEN / ENTRY_AT_RISK / ENTRY_RECOVERED line names it as ``source:id
(title)``, and only once where the title is the id (a GRUB menuentry without --id is known by
its title): "boot entry grub:Debian 6.1.0-1 (fallback) is BROKEN", not the title twice."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootwatch.daemon.health import HealthWatch
from bootwatch.entries.inventory import InventorySettings, read_inventory
from bootwatch.entries.model import Entry
from bootwatch.health.model import Check, EntryHealth, EntryState, Finding


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines() -> Iterator[Lines]:
    logger = logging.getLogger("bootwatch")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def entry(tmp_path: Path) -> Entry:
    entries = tmp_path / "boot" / "loader" / "entries"
    entries.mkdir(parents=True)
    (entries / "a.conf").write_text("title Linux a\nlinux /vmlinuz-a\n")
    [found] = read_inventory(InventorySettings(tmp_path / "boot")).entries
    return found


def broken(e: Entry) -> EntryHealth:
    return EntryHealth.of(e, [Finding(EntryState.BROKEN, Check.FILE, "/boot/vmlinuz-a: missing", "/boot/vmlinuz-a")])


def test_an_entry_is_named_with_its_title(tmp_path: Path, lines: Lines) -> None:
    HealthWatch(tmp_path / "run").note([broken(entry(tmp_path))], complete=True)
    assert lines.lines == ["boot entry bls:a.conf (Linux a) is BROKEN: /boot/vmlinuz-a: missing"]


def test_an_entry_known_by_its_title_is_named_once(tmp_path: Path, lines: Lines) -> None:
    e = entry(tmp_path)
    e = dataclasses.replace(e, id="Debian 6.1.0-1 (fallback)", title="Debian 6.1.0-1 (fallback)")
    watch = HealthWatch(tmp_path / "run")
    watch.note([broken(e)], complete=True)
    watch.note([EntryHealth.of(e, [])], complete=True)
    assert lines.lines == ["boot entry bls:Debian 6.1.0-1 (fallback) is BROKEN: /boot/vmlinuz-a: missing",
                           "boot entry bls:Debian 6.1.0-1 (fallback) is no longer BROKEN: BOOTABLE now"]
