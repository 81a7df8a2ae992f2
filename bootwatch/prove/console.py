"""What a booting kernel's serial console says about the boot: the proof's verdict.

The proof passes when the kernel has run the initramfs's ``/init`` (its line ``Run /init as init
process``, not followed by ``Failed to execute /init``) and nothing below was said, before or
after: an initramfs that did not unpack completely, a panic, an oops or ``BUG:``, a kernel
image that did not decompress, or a module of the initramfs that could not be loaded for this
kernel (missing from ``modules.dep``, unknown symbols, symbol versions or version magic that
disagree, an invalid module). The lines that decided are kept, for the report.

Markers are matched anywhere in a line: the kernel prefixes its messages with a timestamp, and
the early decompressor's ``-- System halted`` ends without a newline, so the reader also feeds
a partial last line (:meth:`ConsoleWatch.feed_partial`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bootwatch.enums import TextEnum

INIT_RAN = "Run /init as init process"
INIT_FAILED = "Failed to execute /init"


class Problem(TextEnum):
    """Why a console says the boot failed."""

    UNPACK = "the initramfs could not be unpacked"
    PANIC = "kernel panic"
    OOPS = "kernel oops or BUG"
    DECOMPRESS = "the kernel image could not be decompressed"
    INIT = "the initramfs's /init could not be run"
    MODULE = "a module could not be loaded"


_PROBLEMS: tuple[tuple[re.Pattern[str], Problem], ...] = (
    (re.compile(r"Initramfs unpacking failed"), Problem.UNPACK),
    (re.compile(r"Kernel panic"), Problem.PANIC),
    (re.compile(r"\bOops\b|(^|\] )BUG: "), Problem.OOPS),
    (re.compile(r"Decoding failed|crc error|-- System halted|Kernel is not a valid ELF file"
                r"|Out of memory while allocating output buffer"), Problem.DECOMPRESS),
    (re.compile(re.escape(INIT_FAILED)), Problem.INIT),
    (re.compile(r"not found in modules\.dep|Unknown symbol|disagrees about version of symbol"
                r"|Invalid module format|version magic '.*' should be|modprobe: (FATAL|ERROR)"
                r"|insmod: (ERROR|can't insert)|not found in directory /(usr/)?lib/modules/"), Problem.MODULE),
)

# The initramfs has got as far as it can without the host's root: initramfs-tools at its break
# point (``break=mount``) or giving up on the root device, dracut's emergency shell. Nothing more
# is to be learnt from the console after one of these.
_FINISHED = re.compile(r"Spawning shell within the initramfs|Gave up waiting for|ALERT! "
                       r"|Dropping to debug shell|Entering emergency mode|Could not boot")

# The kernel has started (the first line it prints on any console). Under an accelerator that
# cannot run this machine (nested KVM rejecting a CPU model) this never comes.
_KERNEL_STARTED = re.compile(r"Linux version \d")

MAX_KEPT = 20


@dataclass(frozen=True)
class Finding:
    problem: Problem
    line: str


class ConsoleWatch:
    """Reads console lines as they come and keeps what the verdict needs."""

    def __init__(self) -> None:
        self.init_ran = False
        self.kernel_started = False
        self.finished = False
        self.findings: list[Finding] = []
        self.init_line: str | None = None
        self._partial_seen: set[Problem] = set()

    def feed(self, line: str) -> None:
        if _KERNEL_STARTED.search(line):
            self.kernel_started = True
        if INIT_RAN in line and self.init_line is None:
            self.init_ran = True
            self.init_line = line
        for pattern, problem in _PROBLEMS:
            if pattern.search(line):
                if len(self.findings) < MAX_KEPT:
                    self.findings.append(Finding(problem, line))
                if problem is Problem.DECOMPRESS:
                    self.kernel_started = True  # the image is at fault, not the accelerator
                break
        if self.init_ran and _FINISHED.search(line):
            self.finished = True

    def feed_partial(self, text: str) -> bool:
        """Look at a line that has not ended yet; True if it decided the boot failed (the
        decompressor halts the machine after ``-- System halted``, without a newline)."""
        for pattern, problem in _PROBLEMS:
            if problem is Problem.DECOMPRESS and pattern.search(text) and problem not in self._partial_seen:
                self._partial_seen.add(problem)
                self.findings.append(Finding(problem, text))
                self.kernel_started = True
                return True
        return False

    @property
    def failed(self) -> bool:
        return bool(self.findings)

    @property
    def passed(self) -> bool:
        return self.init_ran and not self.findings

    @property
    def fatal(self) -> bool:
        """The boot cannot go on: the console says nothing more worth waiting for (after a
        short grace for the panic's trace, which the caller gives)."""
        return any(f.problem in (Problem.PANIC, Problem.DECOMPRESS, Problem.INIT) for f in self.findings)

    def reason(self) -> str:
        """One line: why the boot failed, or what it reached."""
        if self.findings:
            problems = list(dict.fromkeys(f.problem.value for f in self.findings))
            return "; ".join(problems)
        if self.init_ran:
            return "the kernel ran the initramfs's /init"
        if self.kernel_started:
            return "the kernel started but never ran the initramfs's /init"
        return "the kernel never started"

    def evidence(self) -> tuple[str, ...]:
        """The console lines that show the verdict."""
        lines = [f.line for f in self.findings]
        if self.init_line is not None:
            lines.append(self.init_line)
        return tuple(dict.fromkeys(lines))
