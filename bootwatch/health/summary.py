"""Boot entries counted by health state, and the words for them: ``5 bootable, 1 BROKEN``.

One place for the counts that ``bootwatch entries``, ``bootwatch status``, systemd's STATUS= and
the metric ``bootwatch_entries_by_state`` show: every state is counted, zero included, so that
a reader (a script, a Prometheus query) never mistakes a state with no entry for an unknown one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bootwatch.health.model import EntryHealth, EntryState

STATES = tuple(sorted(EntryState, key=lambda s: s.rank))
"""Best first: BOOTABLE, UNKNOWN, AT_RISK, BROKEN."""


def count_states(healths: Iterable[EntryHealth]) -> dict[EntryState, int]:
    """Entries by state, every state present."""
    counts = dict.fromkeys(STATES, 0)
    for health in healths:
        counts[health.state] += 1
    return counts


def states_text(counts: Mapping[EntryState, int]) -> str:
    """``5 bootable, 1 AT_RISK, 1 BROKEN``: the states with entries, best first; a state that is
    not BOOTABLE in capitals, as ``bootwatch entries`` shows it. Empty when there is no entry."""
    return ", ".join(f"{counts[state]} {'bootable' if state is EntryState.BOOTABLE else state.value}"
                     for state in STATES if counts.get(state))
