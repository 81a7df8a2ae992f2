"""The health verdict of one boot entry: a state, and the findings that make it.

The states, worst first (an entry's state is the worst of its findings', BOOTABLE without any):

* ``BROKEN``: it will not boot; a finding says why;
* ``AT_RISK``: as far as it can be checked it boots today, but it depends on something that can
  go (a file only the cache still has, no headroom on its partition);
* ``UNKNOWN``: a part of it cannot be checked; the finding says which;
* ``BOOTABLE``: every check passed.

AT_RISK ranks above UNKNOWN: a risk bootwatch knows of is something a sysadmin can act on, and
it must not hide behind a part that cannot be checked (on hosts where every snapshot entry's
root is UNKNOWN, a kernel only the cache holds would otherwise never be reported). The findings
list both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bootwatch.entries.model import Entry
from bootwatch.enums import TextEnum


class EntryState(TextEnum):
    BOOTABLE = "BOOTABLE"
    UNKNOWN = "UNKNOWN"
    AT_RISK = "AT_RISK"
    BROKEN = "BROKEN"

    @property
    def rank(self) -> int:
        """Higher is worse (see the module docstring)."""
        return _RANK[self]


_RANK = {EntryState.BOOTABLE: 0, EntryState.UNKNOWN: 1, EntryState.AT_RISK: 2, EntryState.BROKEN: 3}


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
