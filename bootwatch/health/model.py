"""The health verdict of one boot entry: a state, and the findings that make it.

The states, worst first (an entry's state is the worst of its findings', BOOTABLE without any):

* ``BROKEN``: it will not boot; a finding says why;
* ``UNKNOWN``: a part of it cannot be checked; the finding says which. It ranks above AT_RISK
  because an entry with an unchecked part cannot be said to boot today;
* ``AT_RISK``: it boots today but depends on something that can go (a file only the cache still
  has, no headroom on its partition);
* ``BOOTABLE``: every check passed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bootwatch.entries.model import Entry
from bootwatch.enums import TextEnum


class EntryState(TextEnum):
    BOOTABLE = "BOOTABLE"
    AT_RISK = "AT_RISK"
    UNKNOWN = "UNKNOWN"
    BROKEN = "BROKEN"

    @property
    def rank(self) -> int:
        """Higher is worse (see the module docstring)."""
        return _RANK[self]


_RANK = {EntryState.BOOTABLE: 0, EntryState.AT_RISK: 1, EntryState.UNKNOWN: 2, EntryState.BROKEN: 3}


class Check(TextEnum):
    """What a finding is about. The values are the JSON names of ``entries --json``."""

    FILE = "file"
    """A file the entry names is missing, only the cache has it, or its place cannot be told."""
    FORMAT = "format"
    """A file is not what its role needs (a truncated kernel, a corrupt initramfs)."""
    KERNEL_VERSION = "kernel-version"
    """The initramfs holds modules, but none for the kernel's release."""
    ROOT_MODULES = "root-modules"
    """The entry's root has no ``lib/modules/<release>``, or the root cannot be told."""
    COMPANION = "companion"
    """A file the boot needs besides the entry's own: FIPS ``.hmac``, a devicetree."""
    HEADROOM = "headroom"
    """The entry's partition lacks room for one more kernel and initramfs."""
    PROOF = "proof"
    """The last boot proof of the entry's current files failed."""


@dataclass(frozen=True)
class Finding:
    """One reason an entry is not BOOTABLE. ``message`` is one line for a sysadmin, naming the file."""

    state: EntryState
    check: Check
    message: str
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.value, "check": self.check.value, "message": self.message, "path": self.path}


def worst(states: Iterable[EntryState]) -> EntryState:
    return max(states, key=lambda s: s.rank, default=EntryState.BOOTABLE)


@dataclass(frozen=True)
class EntryHealth:
    entry: Entry
    state: EntryState
    findings: tuple[Finding, ...]

    @classmethod
    def of(cls, entry: Entry, findings: Sequence[Finding]) -> EntryHealth:
        ordered = tuple(sorted(findings, key=lambda f: -f.state.rank))
        return cls(entry, worst(f.state for f in ordered), ordered)

    @property
    def name(self) -> str:
        """``source:id``, as the references record and the journal name entries."""
        return f"{self.entry.source.value}:{self.entry.id}"
