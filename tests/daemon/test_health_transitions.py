"""bootwatch.daemon.health: which passes of the daemon's health check reach the journal.

The journal hears of transitions, not of states: ENTRY_BROKEN and ENTRY_AT_RISK when an entry
becomes so, ENTRY_RECOVERED when one reported so is neither any more. The entries are a real
BLS inventory; the verdicts are given (the checks themselves are tests/health's), and the
records are read from a real datagram socket as journald parses them (tests/journalentry.py).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from journalentry import parse_entry

from bootwatch.daemon.health import HealthWatch
from bootwatch.entries.inventory import InventorySettings, read_inventory
from bootwatch.entries.model import Entry
from bootwatch.health.model import Check, EntryHealth, EntryState, Finding
from bootwatch.log import Event, setup_logging

BOOTABLE, AT_RISK, UNKNOWN, BROKEN = EntryState.BOOTABLE, EntryState.AT_RISK, EntryState.UNKNOWN, EntryState.BROKEN


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[socket.socket]:
    path = tmp_path / "journal.socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    setup_logging("info", target="journal", journal_socket=path)
    try:
        yield sock
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(handler, "_bootwatch", False):
                root.removeHandler(handler)
                handler.close()
        logging.getLogger("bootwatch").setLevel(logging.NOTSET)
        sock.close()


@pytest.fixture
def entries(tmp_path: Path) -> dict[str, Entry]:
    boot = tmp_path / "boot"
    (boot / "loader" / "entries").mkdir(parents=True)
    for name in ("a", "b", "c"):
        (boot / "loader" / "entries" / f"{name}.conf").write_text(f"title Linux {name}\nlinux /vmlinuz-{name}\n")
    return {e.id.removesuffix(".conf"): e for e in read_inventory(InventorySettings(boot)).entries}


def received(sock: socket.socket) -> list[tuple[str, str, str]]:
    """(event, entry, state) of every record sent so far, and the ENTRY_RECOVERED's previous state."""
    sock.setblocking(False)
    records = []
    while True:
        try:
            record = dict(parse_entry(sock.recv(1 << 20)))
        except BlockingIOError:
            return records
        state = record["BOOTWATCH_STATE"].decode()
        if "BOOTWATCH_PREVIOUS_STATE" in record:
            state = f"{record['BOOTWATCH_PREVIOUS_STATE'].decode()}->{state}"
        records.append((record["BOOTWATCH_EVENT"].decode(), record["BOOTWATCH_ENTRY"].decode(), state))


def verdicts(entries: dict[str, Entry], **states: EntryState) -> list[EntryHealth]:
    return [EntryHealth.of(entries[name], [] if state is BOOTABLE else
                           [Finding(state, Check.FILE, f"/boot/vmlinuz-{name}: {state.value.lower()}",
                                    f"/boot/vmlinuz-{name}")])
            for name, state in states.items()]


def test_transitions_are_logged_once_states_are_not(tmp_path: Path, journal: socket.socket,
                                                    entries: dict[str, Entry]) -> None:
    watch = HealthWatch(tmp_path / "run")
    # The first pass says what is wrong now (a daemon that starts, or restarts).
    watch.note(verdicts(entries, a=BOOTABLE, b=AT_RISK, c=BROKEN), complete=True)
    assert received(journal) == [("ENTRY_AT_RISK", "bls:b.conf", "AT_RISK"), ("ENTRY_BROKEN", "bls:c.conf", "BROKEN")]
    watch.note(verdicts(entries, a=BOOTABLE, b=AT_RISK, c=BROKEN), complete=True)
    assert received(journal) == []  # the same states: nothing
    watch.note(verdicts(entries, a=BOOTABLE, b=BROKEN, c=UNKNOWN), complete=True)
    assert received(journal) == [("ENTRY_BROKEN", "bls:b.conf", "BROKEN"),
                                 ("ENTRY_RECOVERED", "bls:c.conf", "BROKEN->UNKNOWN")]
    watch.note(verdicts(entries, a=UNKNOWN, b=AT_RISK, c=BROKEN), complete=True)
    assert received(journal) == [("ENTRY_AT_RISK", "bls:b.conf", "AT_RISK"), ("ENTRY_BROKEN", "bls:c.conf", "BROKEN")]
    watch.note(verdicts(entries, a=BOOTABLE, b=BOOTABLE, c=BROKEN), complete=True)
    assert received(journal) == [("ENTRY_RECOVERED", "bls:b.conf", "AT_RISK->BOOTABLE")]


def test_an_entry_not_read_is_not_forgotten_one_gone_is(tmp_path: Path, journal: socket.socket,
                                                        entries: dict[str, Entry]) -> None:
    watch = HealthWatch(tmp_path / "run")
    watch.note(verdicts(entries, a=BOOTABLE, c=BROKEN), complete=True)
    assert received(journal) == [("ENTRY_BROKEN", "bls:c.conf", "BROKEN")]
    # A source that cannot be read now: its entries are not gone, and not reported again after.
    watch.note(verdicts(entries, a=BOOTABLE), complete=False)
    watch.note(verdicts(entries, a=BOOTABLE, c=BROKEN), complete=True)
    assert received(journal) == []
    # Read completely without it: gone. An entry of that name that comes back BROKEN is reported.
    watch.note(verdicts(entries, a=BOOTABLE), complete=True)
    watch.note(verdicts(entries, a=BOOTABLE, c=BROKEN), complete=True)
    assert received(journal) == [("ENTRY_BROKEN", "bls:c.conf", "BROKEN")]


def test_a_record_carries_the_entry_its_title_state_and_findings(tmp_path: Path, journal: socket.socket,
                                                                 entries: dict[str, Entry]) -> None:
    watch = HealthWatch(tmp_path / "run")
    watch.note([EntryHealth.of(entries["b"], [
        Finding(UNKNOWN, Check.ROOT_MODULES, "root=UUID=x: no such filesystem here"),
        Finding(BROKEN, Check.FORMAT, "/boot/initrd-b.img: cpio archive truncated", "/boot/initrd-b.img")])],
        complete=True)
    journal.setblocking(True)
    journal.settimeout(5)
    record = dict(parse_entry(journal.recv(1 << 20)))
    assert record["MESSAGE_ID"] == Event.ENTRY_BROKEN.message_id.encode()
    assert record["PRIORITY"] == b"3"
    assert record["MESSAGE"] == b"boot entry bls:b.conf (Linux b) is BROKEN: /boot/initrd-b.img: cpio archive truncated"
    assert record["BOOTWATCH_ENTRY"] == b"bls:b.conf" and record["BOOTWATCH_TITLE"] == b"Linux b"
    assert record["BOOTWATCH_STATE"] == b"BROKEN"
    assert record["BOOTWATCH_PATH"] == str(entries["b"].origin).encode()
    # Every finding, worst first, one per line (a binary field: journald keeps the newline).
    assert record["BOOTWATCH_FINDINGS"] == (b"/boot/initrd-b.img: cpio archive truncated\n"
                                            b"root=UUID=x: no such filesystem here")
