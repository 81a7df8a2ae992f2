"""Whether the root an entry boots holds its kernel's modules (``lib/modules/<release>``).

The root is resolved only where that needs no guess: the running root, a btrfs
``rootflags=subvol=`` snapshot on a mounted btrfs, a snapshot path grub-btrfs names. Any other
root is UNKNOWN for this check, and the finding says so.
"""

from __future__ import annotations

from bootwatch.entries.model import Entry
from bootwatch.health.model import Check, EntryState, Finding


class RootCheck:
    """Resolves entries' roots against this host's mounts (read once per check of the host)."""

    def finding(self, entry: Entry, release: str) -> Finding | None:
        """None when the entry's root holds ``lib/modules/<release>``; else why not, or why that
        cannot be told."""
        return Finding(EntryState.UNKNOWN, Check.ROOT_MODULES,
                       f"the root of the entry is not checked for lib/modules/{release}")
