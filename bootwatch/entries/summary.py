"""What an inventory amounts to, in words: which sources were found, how many entries each holds,
and whether that is a reason to warn.

One place for the words, so that ``bootwatch entries``, ``bootwatch status``, systemd's
``STATUS=``, the daemon's journal warning and its metrics say the same thing:
``5 boot entries (grub 4, bls 1)``.

A location is *read* (it is there and was read completely, also with no entry in it), *missing*
(not there: with ``[entries] sources = "auto"`` that is no source, not an empty one) or
*unknown* (there, or expected, but not read completely). A source is *found* when one of its
locations is read or unknown. **No boot entries** (:attr:`Census.warning`) means: every source
found was read completely and none holds an entry, or no source was found at all. An unknown
source is no warning of this kind: its own reason is (the references are unknown then, and
nothing is taken away on their strength).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

from bootwatch.entries.inventory import GRUB_CONFIGS, Inventory
from bootwatch.entries.model import EntrySource, SourceRead
from bootwatch.log import boot_entries


class LocationState(enum.Enum):
    """How one location of an entry source was found. The values are ``entries --json``'s."""

    READ = "read"
    MISSING = "missing"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class LocationReport:
    """One location an entry source was looked for at, and what was found there."""

    source: EntrySource
    location: Path
    state: LocationState
    entries: int
    """The entries read there (for an unknown location: those that could be read)."""
    reason: str | None = None
    """Why the location is unknown: one line naming the file."""
    refused: tuple[str, ...] = ()
    """Files there that are no entry (a FIFO, a ``.conf`` without ``linux``): one line each."""

    @classmethod
    def of(cls, read: SourceRead) -> LocationReport:
        result = read.result
        if result.unknown is not None:
            state = LocationState.UNKNOWN
        elif os.path.lexists(result.location):
            state = LocationState.READ
        else:
            state = LocationState.MISSING
        return cls(result.source, result.location, state, len(result.entries), result.unknown, read.refused)


@dataclass(frozen=True)
class Census:
    """The entries of an inventory by source, and the words for them."""

    locations: tuple[LocationReport, ...]

    @classmethod
    def of(cls, inventory: Inventory) -> Census:
        return cls(tuple(LocationReport.of(read) for read in inventory.reads))

    @property
    def found(self) -> tuple[LocationReport, ...]:
        return tuple(loc for loc in self.locations if loc.state is not LocationState.MISSING)

    @property
    def by_source(self) -> dict[EntrySource, int]:
        """Entries per source found (0 for one found with none), in the order the sources were read.
        For an unknown source: the entries that could be read, not all there are."""
        counts: dict[EntrySource, int] = {}
        for loc in self.found:
            counts[loc.source] = counts.get(loc.source, 0) + loc.entries
        return counts

    @property
    def unknown(self) -> tuple[LocationReport, ...]:
        return tuple(loc for loc in self.locations if loc.state is LocationState.UNKNOWN)

    @property
    def total(self) -> int:
        return sum(loc.entries for loc in self.found)

    def looked_at(self) -> tuple[Path, ...]:
        """Every location that was looked at, also the ones that are not there (for GRUB both
        ``grub/grub.cfg`` and ``grub2/grub.cfg``, of which the inventory names the first when
        neither is there)."""
        paths: list[Path] = []
        for loc in self.locations:
            if loc.source is EntrySource.GRUB and loc.state is LocationState.MISSING:
                boot = loc.location.parent.parent
                paths += [boot / relative for relative in GRUB_CONFIGS]
            else:
                paths.append(loc.location)
        return tuple(dict.fromkeys(paths))

    def text(self) -> str:
        """``5 boot entries (grub 4, bls 1)``; ``no boot entries (no entry source found)``;
        ``2 boot entries (grub 2; bls unknown)``."""
        unknown = {loc.source for loc in self.unknown}
        known = [f"{source.value} {count}" for source, count in self.by_source.items() if source not in unknown]
        parts = ", ".join(known)
        if unknown:
            parts += ("; " if parts else "") + ", ".join(f"{s.value} unknown" for s in self.by_source if s in unknown)
        if not self.found:
            parts = "no entry source found"
        total = self.total
        count = "no boot entries" if total == 0 else boot_entries(total)
        return f"{count} ({parts})"

    @property
    def warning(self) -> str | None:
        """Why there is nothing to keep bootable, when that is so (see the module docstring):
        one line saying what was looked at. None while there are entries, or a source is unknown."""
        if self.total or self.unknown:
            return None
        looked = ", ".join(str(p) for p in self.looked_at())
        if not self.found:
            return f"no boot entries: no entry source found (looked at {looked})"
        holders = ", ".join(f"{loc.source.value} ({loc.location})" for loc in self.found)
        return f"no boot entries: {holders} {'holds' if len(self.found) == 1 else 'hold'} none (looked at {looked})"


NO_ENTRIES_HINT = ("is the boot partition mounted? bootwatch reads BLS entries, UKIs and GRUB's grub.cfg where "
                   "they are; [entries] sources and [paths] boot in the configuration name where to look")
