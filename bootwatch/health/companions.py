"""The files a boot needs besides those the entry names: a FIPS kernel's ``.hmac``, devicetrees."""

from __future__ import annotations

from pathlib import Path

from bootwatch.entries.model import Entry
from bootwatch.health.model import Finding


def companion_findings(entry: Entry, kernel: Path | None) -> list[Finding]:
    """What is missing of the companions of ``entry``, whose kernel is the host file ``kernel``
    (None when it has none, or its place cannot be told)."""
    return []
