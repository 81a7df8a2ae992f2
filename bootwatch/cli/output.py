"""What the command line prints: tables, times, JSON, and the stream that keeps names printable."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TextIO

from bootwatch.cache.operations import Verification
from bootwatch.errors import printable


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    # Escaped here as well as by the stream (see PrintableStream): the widths are those printed.
    cells = [[printable(str(c)) for c in headers]] + [[printable(str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def format_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


def verification_summary(verified: Verification | None) -> str:
    if verified is None:
        return "never"
    if verified.unchecked:
        return "unchecked"  # cut off by the verify run's bound: no time, verified first next run
    outcome = "ok" if verified.ok else "FAILED"
    return f"{outcome} {format_time(verified.time)}"


class PrintableStream:
    """A text stream that writes everything through :func:`errors.printable` (lines kept).

    Every line the command line prints, tables, messages, errors and log lines alike, may hold a
    name from the boot directory, an entry or the index: none of them reaches the terminal raw.
    JSON needs nothing: json.dumps escapes control characters itself.

    The stream keeps newlines, so it cannot stop a value from forging a line of its own: every
    field printed from something read (a title, options, a path) goes through
    :func:`errors.printable` itself, newlines escaped, as :func:`format_table` does its cells.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(printable(text, lines=True))

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


@contextlib.contextmanager
def printable_output() -> Iterator[None]:
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PrintableStream(sys.stdout), PrintableStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
