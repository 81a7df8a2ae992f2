"""``bootwatch entries``: every boot entry of the host, from every source, with what the cache
holds of it and whether it would boot.

Reads the inventory (:mod:`bootwatch.entries.inventory`) and the cache index without the cache
lock, and changes nothing. Without a cache directory nothing is cached, which is what it shows.
Each entry is judged as the daemon's health pass judges it (:class:`bootwatch.health.judge.HostCheck`,
reading its images).

The ``--json`` document (an interface, documented in the README; keys are only ever added):

    {"summary": "5 boot entries (grub 4, bls 1)",
     "states": {"BOOTABLE": 4, "UNKNOWN": 0, "AT_RISK": 0, "BROKEN": 1},
     "sources": [{"source", "location", "state": "read"|"missing"|"unknown", "reason", "entries",
                  "refused"}],
     "entries": [{"id", "source", "title", "version", "release", "options",
                  "files": [{"path", "role", "partition", "fs_uuid", "key", "cached", "present"}],
                  "state": "BOOTABLE"|"UNKNOWN"|"AT_RISK"|"BROKEN",
                  "findings": [{"state", "check", "message", "path"}]}]}

``version`` is what the entry states (or its kernel's file name), ``release`` what its kernel
image states (:attr:`bootwatch.health.facts.ImageFacts.release`: the setup header's
``kernel_version``, a UKI's ``.uname``; None when it states none or cannot be read). The text
listing shows the entry's version, else the image's release with "(from the image)", else "?".

``states`` counts the entries by state, every state present. An entry's ``state`` is the worst
of its ``findings`` (:class:`bootwatch.health.model.Finding`, worst first; none for BOOTABLE):
``check`` names what the finding is about (:class:`bootwatch.health.model.Check`: ``file``,
``format``, ``kernel-version``, ``root-modules``, ``companion``, ``headroom``, ``proof``),
``message`` is one line naming the file, ``path`` that file on the host (None: no one file).

``key`` is the cache key (None: the file is on no partition bootwatch can tell, so it is never
cached), ``cached`` the state of that key in the index (``cached``, ``restored``, ``missing``,
``broken``, ``unknown``, or ``not cached``; None when the index cannot be read), ``present``
whether the file is a regular file on disk now (None without a key: where it is cannot be told).

Exit code 1 when a source cannot be read completely (each unknown one is a line on stderr, the
entries that could be read are listed all the same) or the index cannot be read; else 0, also
when there is no entry at all (the answer, said in words), and also when an entry is BROKEN: the
listing is the answer. With ``--check``, a BROKEN entry exits 1 too, one line on stderr for each
naming it (``SOURCE:ID``) and why.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from typing import Any

from bootwatch.cache.index import CacheIndex
from bootwatch.cache.operations import BootCache
from bootwatch.cli.output import format_table, print_json
from bootwatch.config import Config
from bootwatch.entries.inventory import Inventory
from bootwatch.entries.model import BootFile, Entry, FileRole
from bootwatch.entries.summary import NO_ENTRIES_HINT, Census, LocationReport, LocationState
from bootwatch.errors import EXIT_FAILURE, EXIT_OK, BootwatchError, printable
from bootwatch.health.facts import FactsMemo
from bootwatch.health.judge import CacheView, HostCheck, proofs_of
from bootwatch.health.model import EntryHealth, EntryState
from bootwatch.health.summary import count_states, states_text

NOT_CACHED = "not cached"
NO_KEY = "no key"


@dataclass(frozen=True)
class FileReport:
    file: BootFile
    key: str | None
    cached: str | None
    """The index's state of ``key`` in lower case, :data:`NOT_CACHED`, or None (the index cannot be read)."""
    present: bool | None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.file.path, "role": self.file.role.value, "partition": self.file.partition.kind.value,
                "fs_uuid": self.file.partition.fs_uuid, "key": self.key, "cached": self.cached,
                "present": self.present}


@dataclass(frozen=True)
class EntryReport:
    entry: Entry
    files: tuple[FileReport, ...]
    health: EntryHealth
    release: str | None = None
    """The release the entry's kernel image states (None: none, or it cannot be read)."""

    @property
    def complete(self) -> bool | None:
        """Every file the entry needs is there (None: some file's place cannot be told)."""
        if any(f.present is False for f in self.files):
            return False
        return None if any(f.present is None for f in self.files) else True

    def to_json(self) -> dict[str, Any]:
        e = self.entry
        return {"id": e.id, "source": e.source.value, "title": e.title, "version": e.version, "release": self.release,
                "files": [f.to_json() for f in self.files], "options": e.options,
                "state": self.health.state.value, "findings": [f.to_json() for f in self.health.findings]}


def _present(inventory: Inventory, key: str | None) -> bool | None:
    if key is None:
        return None
    try:
        # The key is relative to the boot directory, also for an ESP file (/../efi/...).
        st = os.stat(os.path.normpath(str(inventory.roots.boot) + key))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode)


def _cached(cache: BootCache, index: CacheIndex | None, counts: dict[str, int], key: str | None) -> str | None:
    if index is None:
        return None
    if key is None or key not in index:
        return NOT_CACHED
    return str(cache.path_status(index, key, counts).state).lower()


def entry_reports(cache: BootCache, inventory: Inventory, index: CacheIndex | None,
                  facts: FactsMemo) -> list[EntryReport]:
    counts = inventory.reference_counts()
    host = HostCheck(inventory, facts, CacheView(cache, index) if index is not None else None,
                     proofs=proofs_of(cache))
    reports = []
    for entry in inventory.entries:
        files = []
        for file in entry.files:
            key = inventory.key(file)
            files.append(FileReport(file, key, _cached(cache, index, counts, key), _present(inventory, key)))
        reports.append(EntryReport(entry, tuple(files), host.entry(entry), _release(host, entry)))
    return reports


def _release(host: HostCheck, entry: Entry) -> str | None:
    """The release the entry's kernel (or UKI) image states, from the facts the judge read."""
    kernel = next((f for f in entry.files if f.role in (FileRole.KERNEL, FileRole.UKI)), None)
    path = None if kernel is None else host.host_path(kernel) or host.root.locate(kernel)
    known = None if path is None else host.facts.of(path)
    return None if known is None else known.release


def _version(report: EntryReport) -> str:
    if report.entry.version:
        return printable(report.entry.version)
    return f"{printable(report.release)} (from the image)" if report.release else "?"


def location_json(loc: LocationReport) -> dict[str, Any]:
    return {"source": loc.source.value, "location": str(loc.location), "state": loc.state.value,
            "reason": loc.reason, "entries": loc.entries, "refused": list(loc.refused)}


def _location_state(loc: LocationReport) -> str:
    if loc.state is LocationState.MISSING:
        return "not there"
    if loc.state is LocationState.UNKNOWN:
        return f"UNKNOWN ({loc.entries} read)"
    return f"{loc.entries} entr{'y' if loc.entries == 1 else 'ies'}"


def _complete(report: EntryReport) -> str:
    complete = report.complete
    if complete is None:
        return "complete as far as can be told (a file is on no partition bootwatch knows)"
    if complete:
        return "complete"
    missing = sum(1 for f in report.files if f.present is False)
    return f"INCOMPLETE: {missing} of {len(report.files)} files missing"


def print_entries(census: Census, reports: list[EntryReport]) -> None:
    rows = [(loc.source.value, loc.location, _location_state(loc)) for loc in census.locations]
    print("Sources:")
    for line in format_table(("SOURCE", "LOCATION", "FOUND"), rows).splitlines():
        print(f"  {line}")
    if reports:
        file_rows = [(f.file.role.value, f.file.path, f.file.partition.kind.value, f.key or NO_KEY,
                      f.cached or "?", {True: "present", False: "MISSING", None: "?"}[f.present])
                     for r in reports for f in r.files]
        table = format_table(("ROLE", "PATH", "PARTITION", "CACHE KEY", "CACHED", "ON DISK"), file_rows).splitlines()
        print("\nEntries:")
        print(f"      {table[0]}")
        lines = iter(table[1:])
        for number, r in enumerate(reports):
            e = r.entry
            if number:
                print()
            # Titles, ids, versions and options come from files anyone with root on the boot
            # partition wrote, and GRUB keeps a newline in a quoted title: each is one line here.
            print(f"  [{e.source.value}] {printable(e.title)}")
            print(f"    id {printable(e.id)}; version {_version(r)}; {_complete(r)}")
            for _ in r.files:
                print(f"      {next(lines)}")
            if e.options:
                print(f"    options {printable(e.options)}")
            print(f"    state: {r.health.state}")
            for finding in r.health.findings:
                print(f"      - {finding.state} {finding.check}: {printable(finding.message)}")
    warning = census.warning
    if warning is None:
        states = states_text(count_states(r.health for r in reports))
        print(f"\n{census.text()}{': ' + states if states else ''}")
    else:
        print(f"\n{warning}\nhint: {NO_ENTRIES_HINT}")


def command_entries(json_output: bool, config: Config, *, check: bool = False) -> int:
    cache = BootCache.from_config(config)
    inventory = cache.read_inventory()
    census = Census.of(inventory)
    index_error: BootwatchError | None = None
    index: CacheIndex | None
    try:
        index = cache.load_index()
    except (BootwatchError, OSError) as e:
        index = None
        index_error = e if isinstance(e, BootwatchError) else BootwatchError(str(e))
    reports = entry_reports(cache, inventory, index, FactsMemo(config.paths.runtime))
    if json_output:
        states = count_states(r.health for r in reports)
        print_json({"summary": census.text(), "states": {state.value: n for state, n in states.items()},
                    "sources": [location_json(loc) for loc in census.locations],
                    "entries": [r.to_json() for r in reports]})
    else:
        print_entries(census, reports)
    sys.stdout.flush()
    for loc in census.locations:
        for line in loc.refused:
            print(f"bootwatch: warning: {line}", file=sys.stderr)
    for loc in census.unknown:
        print(f"bootwatch: {loc.reason}", file=sys.stderr)
    if index_error is not None:
        print(f"bootwatch: cached state unknown: {index_error}", file=sys.stderr)
    broken = [r.health for r in reports if r.health.state is EntryState.BROKEN] if check else []
    for health in broken:
        reasons = "; ".join(f.message for f in health.findings if f.state is EntryState.BROKEN)
        print(f"bootwatch: {printable(health.name)} is BROKEN: {printable(reasons)}", file=sys.stderr)
    return EXIT_FAILURE if census.unknown or index_error is not None or broken else EXIT_OK
