"""What the command line prints: tables, times, JSON, a progress line, and the stream that keeps
names printable."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from bootwatch.cache.operations import Verification
from bootwatch.errors import printable

if TYPE_CHECKING:
    from bootwatch.verify import ImageCheck


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


def check_text(check: ImageCheck) -> str:
    """One content check as a line of ``verify`` says it: "initramfs: FAILED: truncated ...",
    "image not checked: not a kernel, initramfs or ...", "filesystem skipped: ..."."""
    from bootwatch.verify import ImageKind  # its decompressors and loop devices: only verify needs them
    what = "image" if check.kind is ImageKind.UNKNOWN else str(check.kind)
    if check.failed:
        return f"{what}: FAILED: {check.message}"
    if check.message.startswith("not checked"):  # the message says the outcome itself
        return f"{what} {check.message}"
    return f"{what} {check.outcome}: {check.message}"


class Progress:
    """One line of progress on a terminal ("verifying 3/12: ..."), written over in place with
    ``\r`` and cleared at the end (``with Progress() as progress``) or before other output
    (:meth:`clear`). On a stream that is not a terminal (a pipe, a file, the journal) it writes
    nothing at all, so what a script or the journal reads is the same with or without it.

    The text is escaped (:func:`errors.printable`) and cut to the terminal's width, so that it
    never wraps (a wrapped line cannot be written over); the control characters are its own.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        stream = stream if stream is not None else sys.stderr
        # The progress line's own \r and erase-line reach the terminal; PrintableStream would escape them.
        self._stream: TextIO = stream._stream if isinstance(stream, PrintableStream) else stream
        try:
            self.active = self._stream.isatty()
        except (AttributeError, ValueError):  # no such method, or a closed stream
            self.active = False
        self._shown = False

    def show(self, text: str) -> None:
        if not self.active:
            return
        try:
            width = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError):
            width = 0
        line = printable(text)[:(width or 80) - 1]  # 0: a terminal that does not say its size
        self._stream.write(f"\r{line}\x1b[K")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.clear()


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
