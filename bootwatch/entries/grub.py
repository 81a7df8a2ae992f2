"""Boot entries of a generated ``grub.cfg``, read as text and never executed.

What is understood is what ``grub-mkconfig`` writes on Debian, Ubuntu and Arch (GRUB's
``util/grub.d/10_linux.in``), what grub-btrfs's ``41_snapshots-btrfs`` writes into
``grub-btrfs.cfg``, and GRUB's script syntax as its manual ("Shell-like scripting") defines it:

- words: single quotes keep everything literally; double quotes keep everything but ``$`` and
  a backslash before ``$``, ``"``, ``\\`` or a newline; outside quotes a backslash keeps the next
  character, and a backslash-newline joins lines. ``'\\''`` (how 10_linux quotes a ``'`` in a
  title) is therefore a quote, an escaped ``'`` and a new quote. ``#`` at the start of a word
  starts a comment; ``;`` and newlines end commands; ``{`` and ``}`` delimit blocks.
- ``menuentry TITLE [--class C] [--id ID | $menuentry_id_option ID] ... { BODY }`` and
  ``submenu TITLE ... { BODY }``, nested. ``$menuentry_id_option`` is ``--id`` (00_header sets it
  whenever GRUB has ``feature_menuentry_id``, which every GRUB 2 since 2.00 has).
- in a body: ``linux``/``linuxefi``/``linux16`` (kernel and options), ``initrd``/``initrdefi``/
  ``initrd16`` (one or several images), ``devicetree``, ``chainloader``, and 20_linux_xen's
  ``multiboot``/``multiboot2`` with ``module``/``module2`` (Xen, its dom0 kernel and initrd); the
  partition a path is on from ``search [--no-floppy] --fs-uuid|--label --set=root [--hint...]
  KEY`` (and ``search.fs_uuid``/``search.fs_label``), ``set root=DEVICE`` and ``(DEVICE)/path``.
  ``search --file FILE --set=root`` (``search.file``) makes ``$root`` the first filesystem that
  holds FILE: which one that is depends on the disks, not on the text, so the files after it get
  :attr:`PartitionKind.UNKNOWN` with :attr:`Partition.search_file` set, and the inventory
  resolves it among the host's partitions as GRUB would (see
  :mod:`bootwatch.entries.inventory`). It is never read as "on no partition".
- ``configfile``, ``source`` and ``normal`` include another file: followed only when it is in
  the directory that holds ``grub.cfg`` (spelt ``$prefix/``, ``$config_directory/``,
  ``/grub/`` or ``/boot/grub/`` with the directory's own name), so grub-btrfs's
  ``configfile "${prefix}/grub-btrfs.cfg"`` is seen; at most :data:`MAX_INCLUDE_DEPTH` deep.
- ``if``/``elif``/``else``/``fi``: a condition is evaluated when it is a ``[ ... ]``/``test``
  (``-f``, ``-e``, ``-d``, ``-s`` of a file in the directory that holds ``grub.cfg``; ``-z``,
  ``-n``, ``=``, ``!=``, ``!``, ``-a``, ``-o``) whose every value is known, as GRUB would evaluate
  it, and only that branch is read. A value is known when the file sets it outside any branch
  read in doubt, or it is ``$prefix``/``$config_directory`` (GRUB's normal mode sets
  ``config_directory`` to the directory of the file it reads, since GRUB 2.02:
  grub-core/normal/main.c, so Debian's ``41_custom`` reads ``custom.cfg`` once, through its
  first branch). Anything else (a variable from ``grubenv``, GRUB's ``feature_*``, a ``search
  --set`` result, a command as the condition) is unknown, and then every branch that might be
  taken is read, in order (grub-mkconfig writes the same ``search`` in both branches of its
  ``feature_platform_search_hint`` test), an entry read twice so (same file, same id, same
  files) counting once. Loops are read once. ``function`` bodies are not read. Nothing is run.
- ``$variables``: those the file ``set``s, and after ``load_env`` those of ``grubenv`` (see
  :mod:`bootwatch.entries.grubenv`). In a path an unset variable is empty, as GRUB expands it;
  in options it is kept as written (Ubuntu's ``$vt_handoff``). Either gives one debug line.

A file's :class:`~bootwatch.entries.model.PartitionKind` is what its path says: ``/boot/...``
is on the root filesystem with /boot a directory of it (``BootFile.boot_path()`` drops the
prefix), ``/EFI/...`` on the ESP, ``boot`` deeper in the path (a btrfs subvolume, ``/@/boot/``)
unknown, anything else at the root of the /boot filesystem. Paths keep their spelling, except
that GRUB reads ``//`` as ``/``.

Anything else is skipped, with a debug line when it is not a command known to load nothing.
What makes the result *unknown* instead: ``grub.cfg`` missing, or it or an include existing but
unreadable (or larger than :data:`MAX_CONFIG_SIZE`, or all together than
:data:`MAX_TOTAL_SIZE`), unbalanced quotes or braces, blocks nested deeper than
:data:`MAX_NESTING`, includes deeper than :data:`MAX_INCLUDE_DEPTH` or named so that they are no
file here, and a path that depends on a ``grubenv`` that cannot be read. A ``menuentry`` that
loads no file (``fwsetup``, grub-btrfs's column header) is no boot entry.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, Union

from bootwatch.entries.grubenv import GrubEnv, read_grubenv
from bootwatch.entries.model import (
    BootFile,
    Entry,
    EntrySource,
    FileRole,
    Partition,
    PartitionKind,
    SourceResult,
)
from bootwatch.errors import FileTooLargeError, NotRegularFileError
from bootwatch.safety import read_regular

log = logging.getLogger("bootwatch.entries.grub")

MAX_CONFIG_SIZE = 1 << 20
"""A generated grub.cfg is tens of kilobytes; grub-btrfs's 50 snapshots make about 200 kB."""
MAX_TOTAL_SIZE = 2 << 20
"""All files read for one ``grub.cfg`` together: reading is pure Python, about seven seconds a
mebibyte for the most expensive text, so this bounds the time a hostile configuration costs."""
MAX_INCLUDE_DEPTH = 8
MAX_FILES = 16
"""Files read for one ``grub.cfg``, itself and every include together."""
MAX_NESTING = 16
"""Blocks inside blocks; GRUB's own menus nest two or three deep. With the include depth it also
bounds the reader's recursion well below Python's limit."""

KERNEL_COMMANDS = frozenset({"linux", "linuxefi", "linux16"})
INITRD_COMMANDS = frozenset({"initrd", "initrdefi", "initrd16"})
# 20_linux_xen: the hypervisor, then the dom0 kernel and its initrd as modules.
HYPERVISOR_COMMANDS = frozenset({"multiboot", "multiboot2", "xen_hypervisor"})
MODULE_COMMANDS = frozenset({"module", "module2", "xen_module"})
LOAD_COMMANDS = KERNEL_COMMANDS | INITRD_COMMANDS | HYPERVISOR_COMMANDS | MODULE_COMMANDS | {"devicetree",
                                                                                              "chainloader"}
INCLUDE_COMMANDS = frozenset({"configfile", "source", ".", "normal"})
# Read in order whatever their condition: see the module docstring.
TRANSPARENT_KEYWORDS = frozenset({"if", "then", "elif", "else", "fi", "while", "until", "do", "done", "!"})
# Commands that load no boot file and change nothing the parser tracks: skipped without a word.
QUIET_COMMANDS = frozenset({
    "[", "test", "true", "false", "echo", "insmod", "load_video", "loadfont", "gfxmode", "terminal_output",
    "terminal_input", "terminal", "serial", "terminfo", "save_env", "savedefault", "export", "gettext",
    "background_image", "background_color", "play", "sleep", "clear", "boot", "reboot", "halt", "fwsetup",
    "set_background_image", "keystatus", "videoinfo", "recordfail", "return", "break", "continue",
})
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)
_KERNEL_PREFIXES = ("vmlinuz-", "vmlinux-", "kernel-", "linux-", "bzImage-")

# $prefix and $config_directory name the directory that holds grub.cfg, whose spelling on the
# loader's side (/grub, /boot/grub, (hd0,gpt2)/grub) is not in the file. A private-use character
# marks it, so that an include can be recognised as "in that directory" and nothing else.
_GRUB_DIR = "\ue000grubdir"


class GrubSyntaxError(ValueError):
    """The text is not a GRUB script GRUB would read as a whole (unbalanced quotes or braces)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")


class _Unknown(Exception):
    """What makes the whole source unknown; caught once, at the top."""


# ---------------------------------------------------------------------------------------------
# Words and the lexer


@dataclass(frozen=True)
class _Part:
    text: str
    quoted: bool
    var: str | None = None
    """A variable reference: its name; ``text`` is then its spelling (``$x``, ``${x}``)."""


@dataclass(frozen=True)
class _Word:
    parts: tuple[_Part, ...]
    line: int

    @property
    def literal(self) -> str | None:
        """The word's text if it holds no variable."""
        if any(p.var is not None for p in self.parts):
            return None
        return "".join(p.text for p in self.parts)


@dataclass(frozen=True)
class _Op:
    op: str
    line: int


_Token = Union[_Word, _Op]
_PLAIN_QUOTED = re.compile(r'[^"\\$]+')
_PLAIN = re.compile(r"[^ \t\r\n;{}'\"\\$]+")
_VAR_START = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+|[?#*@]")


class _Lexer:
    """GRUB's script lexer, as far as the words and separators go (see the module docstring)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.line = 1
        self.tokens: list[_Token] = []
        self.parts: list[_Part] = []
        self.literal: list[str] = []
        self.literal_quoted = False
        self.word_line = 1

    def run(self) -> Iterator[_Token]:
        """The tokens, as they are read: a parser that gives up early stops the reading too."""
        text = self.text
        while self.i < len(text):
            c = text[self.i]
            if c in " \t\r":
                self._end_word()
                self.i += 1
            elif c in "\n;{}":
                self._end_word()
                self.tokens.append(_Op(c, self.line))
                self.line += c == "\n"
                self.i += 1
            elif c == "#" and not self._in_word():
                end = text.find("\n", self.i)
                self.i = len(text) if end < 0 else end
            else:
                self._word_char(c)
            if self.tokens:
                yield from self.tokens
                self.tokens.clear()
        self._end_word()
        yield from self.tokens

    def _in_word(self) -> bool:
        return bool(self.parts or self.literal)

    def _word_char(self, c: str) -> None:
        if not self._in_word():
            self.word_line = self.line
        if c == "'":
            self._single_quoted()
        elif c == '"':
            self._double_quoted()
        elif c == "\\":
            nxt = self.text[self.i + 1:self.i + 2]
            if nxt == "\n":  # a line continuation, also between words
                self.line += 1
            elif nxt:
                self._add(nxt, quoted=True)
            self.i += 2
        elif c == "$":
            self._variable(quoted=False)
        else:
            match = _PLAIN.match(self.text, self.i)
            end = match.end() if match else self.i + 1
            self._add(self.text[self.i:end], quoted=False)
            self.i = end

    def _single_quoted(self) -> None:
        end = self.text.find("'", self.i + 1)
        if end < 0:
            raise GrubSyntaxError(self.line, "a single quote is not closed")
        chunk = self.text[self.i + 1:end]
        self._add(chunk, quoted=True, force=True)
        self.line += chunk.count("\n")
        self.i = end + 1

    def _double_quoted(self) -> None:
        start_line = self.line
        self._add("", quoted=True, force=True)  # "" is an (empty) argument
        self.i += 1
        while True:
            if self.i >= len(self.text):
                raise GrubSyntaxError(start_line, "a double quote is not closed")
            c = self.text[self.i]
            if c == '"':
                self.i += 1
                return
            if c == "\\" and self.text[self.i + 1:self.i + 2] in ("$", '"', "\\", "\n"):
                nxt = self.text[self.i + 1]
                if nxt == "\n":
                    self.line += 1
                else:
                    self._add(nxt, quoted=True)
                self.i += 2
            elif c == "$":
                self._variable(quoted=True)
            else:
                match = _PLAIN_QUOTED.match(self.text, self.i)
                end = match.end() if match else self.i + 1
                chunk = self.text[self.i:end]
                self.line += chunk.count("\n")
                self._add(chunk, quoted=True)
                self.i = end

    def _variable(self, *, quoted: bool) -> None:
        text = self.text
        if text.startswith("${", self.i):
            end = text.find("}", self.i + 2)
            if end < 0:
                raise GrubSyntaxError(self.line, "a ${ is not closed")
            name, spelling, self.i = text[self.i + 2:end], text[self.i:end + 1], end + 1
        else:
            match = _VAR_START.match(text, self.i + 1)
            if match is None:  # a lone $ is itself
                self._add("$", quoted=quoted)
                self.i += 1
                return
            name, spelling, self.i = match.group(), text[self.i:match.end()], match.end()
        self._flush_literal()
        self.parts.append(_Part(spelling, quoted, name))

    def _add(self, chars: str, *, quoted: bool, force: bool = False) -> None:
        if self.literal and self.literal_quoted != quoted:
            self._flush_literal()
        self.literal_quoted = quoted
        self.literal.append(chars)
        if force and not chars:
            self._flush_literal(keep_empty=True)

    def _flush_literal(self, *, keep_empty: bool = False) -> None:
        chunk = "".join(self.literal)
        self.literal.clear()
        if not chunk and not keep_empty:
            return
        last = self.parts[-1] if self.parts else None
        if last is not None and last.var is None and last.quoted == self.literal_quoted:
            self.parts[-1] = _Part(last.text + chunk, last.quoted)  # '' '' is one (empty) part, not many
        else:
            self.parts.append(_Part(chunk, self.literal_quoted))

    def _end_word(self) -> None:
        self._flush_literal()
        if self.parts:
            self.tokens.append(_Word(tuple(self.parts), self.word_line))
            self.parts = []


# ---------------------------------------------------------------------------------------------
# Commands and blocks


@dataclass
class _Command:
    words: list[_Word]


@dataclass
class _Block:
    head: list[_Word]
    body: list[_Node] = field(default_factory=list)


_Node = Union[_Command, _Block]


def _parse(tokens: Iterable[_Token]) -> list[_Node]:
    top: list[_Node] = []
    stack: list[_Block] = []
    words: list[_Word] = []

    def body() -> list[_Node]:
        return stack[-1].body if stack else top

    for token in tokens:
        if isinstance(token, _Word):
            words.append(token)
            continue
        if token.op == "{":
            if len(stack) >= MAX_NESTING:
                raise GrubSyntaxError(token.line, f"blocks nested deeper than {MAX_NESTING}")
            block = _Block(words)
            body().append(block)
            stack.append(block)
            words = []
            continue
        if words:
            body().append(_Command(words))
            words = []
        if token.op == "}":
            if not stack:
                raise GrubSyntaxError(token.line, "a } closes no block")
            stack.pop()
    if words:
        body().append(_Command(words))
    if stack:
        head = stack[-1].head
        raise GrubSyntaxError(head[0].line if head else 0, "a block is not closed")
    return top


def _assigned(nodes: list[_Node]) -> set[str]:
    """Every variable the commands of ``nodes`` (and their blocks) may set."""
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, _Block):
            names |= _assigned(node.body)
            continue
        texts = [_head_text(w) for w in _strip_keywords(node.words)]
        assignments = texts[1:] if texts[:1] == ["set"] else texts[:1]  # set a=1 b=2, or a=1
        names |= {m.group(1) for m in map(_ASSIGNMENT.match, assignments) if m is not None}
        for i, text in enumerate(texts):
            if text.startswith("--set="):
                names.add(text[len("--set="):])
            elif text in ("--set", "-s") and i + 1 < len(texts):
                names.add(texts[i + 1].split(":")[-1])
    return names


def _is_test(words: list[_Word]) -> bool:
    head = _strip_keywords(words)
    return bool(head) and head[0].literal in ("[", "test", "true", "false")


def _split(args: list[str], separator: str) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for arg in args:
        if arg == separator:
            parts.append([])
        else:
            parts[-1].append(arg)
    return parts


def _strip_keywords(words: list[_Word]) -> list[_Word]:
    i = 0
    while i < len(words) and words[i].literal in TRANSPARENT_KEYWORDS:
        i += 1
    return words[i:]


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class _Root:
    """What ``$root`` is: None everywhere for the partition GRUB read grub.cfg from."""

    fs_uuid: str | None = None
    label: str | None = None
    device: str | None = None
    followed: bool = True
    """False after a ``search`` whose result the parser cannot tell."""
    search_file: str | None = None
    """``search --file FILE``: the file whose filesystem GRUB picks (see :class:`Partition`)."""


@dataclass
class _Scope:
    vars: dict[str, str]
    root: _Root
    menu: tuple[str, ...]
    origin: Path
    depth: int
    env_unknown: str | None = None
    """Why the variables ``load_env`` brought are unknown (the block could not be read)."""
    unsure: set[str] = field(default_factory=set)
    """Variables whose value at boot is not known: set in a branch read in doubt, from
    ``grubenv`` (GRUB rewrites it at boot), or by a command's ``--set``."""

    def child(self, menu: tuple[str, ...] | None = None) -> _Scope:
        return dataclasses.replace(self, vars=dict(self.vars), unsure=set(self.unsure),
                                   menu=self.menu if menu is None else menu)


@dataclass
class _Branch:
    """One ``if``/``while``/``for`` being read, in the commands of one block."""

    outer: bool
    """The code around it is read."""
    loop: bool = False
    cond: bool | None = False
    """The last ``if``/``elif`` condition: None when it cannot be told."""
    taken: bool = False
    """A branch GRUB certainly takes was seen: the later ``elif``/``else`` are not read."""
    doubt: bool = False
    """An earlier condition could not be told: a later branch may not be reached."""
    reading: bool = True
    unsure: bool = False
    """The branch being read is read without knowing that GRUB takes it."""


_TEST_FILE_OPS = frozenset({"-e", "-f", "-d", "-s"})


@dataclass
class _EntryBuilder:
    title: str
    menu: tuple[str, ...]
    origin: Path
    kernel: BootFile | None = None
    options: str = ""
    modules: tuple[BootFile, ...] = ()
    initrds: tuple[BootFile, ...] = ()
    devicetree: BootFile | None = None
    efi: BootFile | None = None


_Mode = Literal["path", "option", "value"]
"""How an unset variable expands: "path": to nothing, as GRUB does, with a debug line (and the
source is unknown when the variable may come from an unreadable grubenv); "option": kept as
written, with a debug line; "value" (an assignment's value): to nothing, silently."""


class _Reader:
    """Evaluates the commands of one grub.cfg and what it includes, collecting entries."""

    def __init__(self, grub_dir: Path, grubenv: Callable[[], GrubEnv]) -> None:
        self.grub_dir = grub_dir
        self._grubenv = grubenv
        self._env: GrubEnv | None = None
        self.entries: list[Entry] = []
        self.ids: dict[str, int] = {}
        self.files_read = 0
        self.bytes_read = 0
        self.reading: list[Path] = []
        self.logged: set[tuple[Path, str]] = set()
        self.doubt = 0
        """Above zero while a branch read in doubt runs (see :class:`_Scope` ``unsure``)."""
        self.seen: set[tuple[Path, str, str, tuple[BootFile, ...], str]] = set()
        self.functions: dict[str, set[str]] = {}
        """The variables each ``function`` defined so far may set (its own and those it calls)."""

    # -- entry points --

    def read_file(self, path: Path, scope: _Scope | None) -> None:
        """Read and evaluate ``path``; a missing include is a debug line, anything unreadable unknown."""
        real = Path(os.path.realpath(path))
        if real in self.reading:
            log.debug("%s: includes itself (through %s); not read again", path, self.reading[-1])
            return
        self.files_read += 1
        if self.files_read > MAX_FILES:
            raise _Unknown(f"{path}: more than {MAX_FILES} GRUB configuration files included")
        text = self._text(path, include=scope is not None)
        if text is None:
            return
        try:
            nodes = _parse(_Lexer(text).run())
        except GrubSyntaxError as e:
            raise _Unknown(f"{path}: {e}; GRUB would not read this file as written") from None
        if scope is None:
            scope = _Scope({}, _Root(), (), path, 0)
        else:
            scope = dataclasses.replace(scope, origin=path, depth=scope.depth + 1)
        self.reading.append(real)
        try:
            self.run(nodes, scope)
        finally:
            self.reading.pop()

    def _text(self, path: Path, *, include: bool) -> str | None:
        try:
            data = read_regular(path, follow_symlinks=not include, limit=MAX_CONFIG_SIZE)
        except FileNotFoundError:
            if include and not os.path.lexists(path):
                log.debug("%s: included but does not exist; GRUB shows no entries from it", path)
                return None
            what = "a dangling symlink" if os.path.lexists(path) else "does not exist"
            raise _Unknown(f"{path}: the GRUB configuration {what}") from None
        except FileTooLargeError:
            raise _Unknown(f"{path}: a GRUB configuration larger than {MAX_CONFIG_SIZE} bytes, not read") from None
        except NotRegularFileError as e:
            raise _Unknown(f"{path}: {e.strerror}; not read as a GRUB configuration") from None
        except OSError as e:
            reason = os.strerror(e.errno).lower() if e.errno else str(e)
            raise _Unknown(f"{path}: the GRUB configuration cannot be read ({reason})") from None
        self.bytes_read += len(data)
        if self.bytes_read > MAX_TOTAL_SIZE:
            raise _Unknown(f"{path}: GRUB configuration files larger than {MAX_TOTAL_SIZE} bytes together, not read")
        return data.decode("utf-8", errors="replace")

    def run(self, nodes: list[_Node], scope: _Scope) -> None:
        for node, words in self._flow(nodes, scope):
            if isinstance(node, _Block):
                self._block(node, scope)
            else:
                self._command(words, scope, None)

    # -- conditions --

    def _flow(self, nodes: list[_Node], scope: _Scope) -> Iterator[tuple[_Node, list[_Word]]]:
        """The nodes GRUB may run, each with its words after the keywords (see the module docstring)."""
        stack: list[_Branch] = []
        for node in nodes:
            words = self._keywords(node.head if isinstance(node, _Block) else node.words, stack, scope)
            if words is None:
                continue
            doubt = any(b.unsure for b in stack)
            self.doubt += doubt
            try:
                yield node, words
            finally:
                self.doubt -= doubt

    def _keywords(self, words: list[_Word], stack: list[_Branch], scope: _Scope) -> list[_Word] | None:
        """Apply the leading keywords of ``words`` to ``stack``: the words to run, or None."""
        for i, word in enumerate(words):
            keyword = word.literal
            reading = stack[-1].reading if stack else True
            if keyword in ("if", "elif"):
                if keyword == "if" or not stack or stack[-1].loop:
                    stack.append(_Branch(outer=reading))
                branch = stack[-1]
                branch.reading = False
                rest = words[i + 1:]  # "!" negates: kept for the condition
                if not branch.outer or branch.taken:
                    branch.cond = False
                    return None
                branch.cond = self._condition(rest, scope)
                return _strip_keywords(rest) if branch.cond is None and not _is_test(rest) else None
            if keyword in ("while", "until", "for"):
                stack.append(_Branch(outer=reading, loop=True, reading=reading, unsure=True))
                return None if keyword == "for" or not reading else _strip_keywords(words[i + 1:])
            if keyword == "then" and stack and not stack[-1].loop:
                b = stack[-1]
                b.reading = b.outer and not b.taken and b.cond is not False
                b.unsure = b.doubt or b.cond is None
                b.taken = b.taken or b.cond is True  # this or an earlier one: never the later ones
                b.doubt = b.doubt or b.cond is None
            elif keyword == "else" and stack and not stack[-1].loop:
                b = stack[-1]
                b.reading, b.unsure = b.outer and not b.taken, b.doubt
            elif (keyword == "fi" and stack and not stack[-1].loop) or (keyword == "done" and stack and stack[-1].loop):
                stack.pop()
            elif keyword not in TRANSPARENT_KEYWORDS:
                return words[i:] if reading else None
        return [] if (stack[-1].reading if stack else True) else None

    def _condition(self, words: list[_Word], scope: _Scope) -> bool | None:
        """What GRUB makes of an ``if`` condition, or None when that cannot be told."""
        negate = False
        while words and words[0].literal == "!":
            negate, words = not negate, words[1:]
        if not words:
            return None
        name = words[0].literal
        if name in ("true", "false") and len(words) == 1:
            value: bool | None = name == "true"
        elif name == "[" and words[-1].literal == "]" or name == "test":
            args = [self._test_word(w, scope) for w in words[1:-1 if name == "[" else None]]
            value = None if any(a is None for a in args) else self._test([a for a in args if a is not None], scope)
        else:
            return None
        return None if value is None else value != negate

    def _test_word(self, word: _Word, scope: _Scope) -> str | None:
        """The word's value in a test, or None when a variable in it is not known at boot."""
        for part in word.parts:
            name = part.var
            if name is None or name == "menuentry_id_option":
                continue
            if name in scope.unsure or (name not in scope.vars and name not in ("prefix", "config_directory")):
                return None
        value = "".join(self._expand(word, scope, "value", split=False))
        if any(p.var is not None and not p.quoted for p in word.parts) and len(value.split()) != 1:
            return None  # GRUB splits an unquoted value: a different test
        return value

    def _test(self, args: list[str], scope: _Scope) -> bool | None:
        """GRUB's ``test`` on known values: ``-o`` of ``-a`` of primaries, three-valued."""
        def any_of(values: list[bool | None], stop: bool) -> bool | None:
            return stop if stop in values else None if None in values else not stop
        alternatives = _split(args, "-o")
        return any_of([any_of([self._primary(p, scope) for p in _split(a, "-a")], False) for a in alternatives], True)

    def _primary(self, args: list[str], scope: _Scope) -> bool | None:
        if args[:1] == ["!"]:
            value = self._primary(args[1:], scope)
            return None if value is None else not value
        if not args:
            return False
        if len(args) == 1:
            return args[0] != ""
        if len(args) == 2 and args[0] in ("-z", "-n"):
            return (args[1] == "") == (args[0] == "-z")
        if len(args) == 2 and args[0] in _TEST_FILE_OPS:
            return self._file_test(args[0], args[1], scope)
        if len(args) == 3 and args[1] in ("=", "==", "!="):
            return (args[0] == args[2]) == (args[1] != "!=")
        return None

    def _file_test(self, op: str, path: str, scope: _Scope) -> bool | None:
        """``-f``/``-e``/``-d``/``-s`` of a file in the grub directory (GRUB reads that very
        partition); anywhere else it cannot be told."""
        real = self._include_path(path, scope)
        if real is None:
            return None
        try:
            st = os.stat(real)
        except FileNotFoundError:
            return False
        except OSError:
            return None
        directory = stat.S_ISDIR(st.st_mode)
        return {"-e": True, "-f": not directory, "-d": directory, "-s": not directory and st.st_size > 0}[op]

    # -- blocks --

    def _block(self, block: _Block, scope: _Scope) -> None:
        head = _strip_keywords(block.head)
        kind = _block_kind(block)
        if kind == "menuentry":
            self._menuentry(head, block.body, scope)
        elif kind == "submenu":
            title, entry_id = self._menu_head(head, scope)
            self.run(block.body, scope.child(scope.menu + (entry_id or title,)))
        elif kind == "function":
            name = head[1].literal if len(head) > 1 else None
            log.debug("%s: line %d: function %s: its body is not read", scope.origin, head[0].line, name or "?")
            if name:  # a call may set what its body sets: no longer known after it
                self.functions[name] = _assigned(block.body)
        else:
            log.debug("%s: line %d: a block after %r is read as plain commands", scope.origin,
                      head[0].line if head else 0, kind)
            self.run(block.body, scope)

    def _menu_head(self, head: list[_Word], scope: _Scope) -> tuple[str, str | None]:
        """The title and the ``--id`` of a menuentry or submenu."""
        args = [a for w in head[1:] for a in self._expand(w, scope, "option")]
        title: str | None = None
        entry_id: str | None = None
        i = 0
        while i < len(args):
            arg = args[i]
            if arg in ("--class", "--users", "--hotkey", "--id", "--source"):
                if arg == "--id" and i + 1 < len(args):
                    entry_id = args[i + 1]
                i += 2
                continue
            if arg.startswith("--id="):
                entry_id = arg[len("--id="):]
            elif arg.startswith("--"):
                pass  # --unrestricted, --class=...
            elif title is None:
                title = arg
            i += 1
        return title or "", entry_id

    def _menuentry(self, head: list[_Word], body: list[_Node], scope: _Scope) -> None:
        title, entry_id = self._menu_head(head, scope)
        menu = scope.menu + (entry_id or title,)
        inner = scope.child(menu)
        builder = _EntryBuilder(title, menu, scope.origin)
        self._walk_entry(body, inner, builder)
        self._finish(builder)

    def _walk_entry(self, nodes: list[_Node], scope: _Scope, builder: _EntryBuilder) -> None:
        for node, words in self._flow(nodes, scope):
            if isinstance(node, _Command):
                self._command(words, scope, builder)
            elif _block_kind(node) in ("menuentry", "submenu"):
                self._block(node, scope)  # a menu GRUB shows when the entry runs
            else:
                self._walk_entry(node.body, scope, builder)

    def _finish(self, b: _EntryBuilder) -> None:
        files = tuple(f for f in (b.kernel, *b.modules, *b.initrds, b.devicetree, b.efi) if f is not None)
        if not files:
            log.debug("%s: menuentry %r loads no file; not a boot entry", b.origin, b.title)
            return
        entry_id = ">".join(b.menu)
        same = (b.origin, entry_id, b.title, files, b.options)
        if same in self.seen:  # read again through another branch GRUB may take instead
            log.debug("%s: menuentry %r read twice (in branches of an if); listed once", b.origin, b.title)
            return
        self.seen.add(same)
        seen = self.ids.get(entry_id, 0) + 1
        self.ids[entry_id] = seen
        if seen > 1:  # grub-btrfs gives every kernel of a snapshot the same id
            entry_id = f"{entry_id}#{seen}"
        kernels = (_version_from_kernel(f.path) for f in files if f.role is FileRole.KERNEL)
        version = next((v for v in kernels if v is not None), None)
        self.entries.append(Entry(EntrySource.GRUB, entry_id, b.title, version, files, b.options, b.origin))

    # -- commands --

    def _command(self, words: list[_Word], scope: _Scope, builder: _EntryBuilder | None) -> None:
        if not words:
            return
        name = words[0].literal
        if _ASSIGNMENT.match(_head_text(words[0])):
            self._assign(words[0], scope)  # name=value, without set
            return
        if name is None:
            log.debug("%s: line %d: a command named by a variable is skipped", scope.origin, words[0].line)
            return
        handler = self._HANDLERS.get(name)
        if handler is not None:
            handler(self, words, scope, builder)
        elif name in LOAD_COMMANDS:
            if builder is None:
                log.debug("%s: line %d: %s outside a menuentry is skipped", scope.origin, words[0].line, name)
            else:
                self._load(name, words, scope, builder)
        else:
            self._unknown_command(name, words, scope)

    def _unknown_command(self, name: str, words: list[_Word], scope: _Scope) -> None:
        """Skip a command the reader does not follow; what it may set (``probe --set=x``,
        ``regexp --set x``, ``read x``) is no longer known."""
        args = [w.literal or "" for w in words[1:]]
        called, todo = set(), [name]
        while todo:
            function = todo.pop()
            if function in self.functions and function not in called:
                called.add(function)
                scope.unsure.update(self.functions[function])
                todo.extend(self.functions)  # it may call any of them: all they set, to be safe
        if name == "eval":
            scope.unsure.update(scope.vars)
        for i, arg in enumerate(args):
            if arg.startswith("--set="):
                scope.unsure.add(arg[len("--set="):])
            elif arg in ("--set", "-s") and i + 1 < len(args):
                scope.unsure.add(args[i + 1].split(":")[-1])
            elif name in ("read", "getenv", "eval"):
                scope.unsure.add(arg)
        if name not in QUIET_COMMANDS and (scope.origin, f"command {name}") not in self.logged:
            self.logged.add((scope.origin, f"command {name}"))
            log.debug("%s: line %d: %s is not read (nor, in this file, again)", scope.origin, words[0].line, name)

    def _set(self, words: list[_Word], scope: _Scope, builder: _EntryBuilder | None) -> None:
        for word in words[1:]:
            self._assign(word, scope)

    def _assign(self, word: _Word, scope: _Scope) -> None:
        match = _ASSIGNMENT.match(_head_text(word))
        if match is None:
            return
        name = match.group(1)
        value = "".join(self._expand(_after_equals(word), scope, "value", split=False))
        scope.vars[name] = value
        if self.doubt or any(p.var in scope.unsure for p in word.parts if p.var is not None):
            scope.unsure.add(name)
        else:
            scope.unsure.discard(name)
        if name == "root":
            scope.root = _Root(device=value.strip("()") or None)

    def _unset(self, words: list[_Word], scope: _Scope, builder: _EntryBuilder | None) -> None:
        for word in words[1:]:
            if word.literal:
                scope.vars.pop(word.literal, None)

    def _search(self, words: list[_Word], scope: _Scope, builder: _EntryBuilder | None) -> None:
        args = [a for w in words for a in self._expand(w, scope, "option")]
        command, args = args[0], args[1:]
        how = {"search.fs_uuid": "uuid", "search.fs_label": "label", "search.file": "file"}.get(command)
        target = "root"
        keys: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            if how is None and arg in ("-u", "--fs-uuid", "-l", "--label", "-f", "--file"):
                how = {"-u": "uuid", "--fs-uuid": "uuid", "-l": "label", "--label": "label"}.get(arg, "file")
            elif arg in ("-s", "--set"):
                target = "root"
            elif arg.startswith("--set="):
                target = arg[len("--set="):]
            elif arg.startswith("--hint"):
                i += "=" not in arg  # --hint VALUE takes the next word
            elif not arg.startswith("-"):
                keys.append(arg)
            i += 1
        if how is not None and command.startswith("search.") and len(keys) > 1:
            target = keys.pop()  # search.fs_uuid UUID VARIABLE
        if target == "root" and keys and how == "file":
            scope.vars.pop("root", None)
            scope.root = _Root(followed=False, search_file=keys[0])
            return
        if target != "root":
            scope.unsure.add(target)
        if target != "root" or not keys or how is None:
            log.debug("%s: line %d: %s: which partition it finds is not followed", scope.origin, words[0].line,
                      " ".join(args))
            if target == "root":
                scope.vars.pop("root", None)
                scope.root = _Root(followed=False)
            return
        scope.vars.pop("root", None)  # ($root) is then scope.root, not a device set before
        scope.root = _Root(fs_uuid=keys[0]) if how == "uuid" else _Root(label=keys[0])

    def _load_env(self, words: list[_Word], scope: _Scope, builder: _EntryBuilder | None) -> None:
        args = [a for w in words[1:] for a in self._expand(w, scope, "option")]
        names: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            if arg in ("-f", "--file"):
                named = self._include_path(args[i + 1] if i + 1 < len(args) else "", scope)
                if named != Path(os.path.realpath(self.grub_dir / "grubenv")):
                    log.debug("%s: line %d: load_env %s: not the grubenv next to grub.cfg; its variables are "
                              "not known", scope.origin, words[0].line, " ".join(args))
                    scope.env_unknown = f"load_env {' '.join(args)}: another environment block"
                    return
                i += 1
            elif arg.startswith("--file="):
                pass
            elif not arg.startswith("-"):
                names.append(arg)
            i += 1
        env = self._env_block()
        if env.unknown is not None:
            scope.env_unknown = env.unknown
        for name, value in env.values.items():
            if not names or name in names:
                scope.vars[name] = value
                scope.unsure.add(name)  # GRUB rewrites grubenv at boot (next_entry, boot_success)

    def _env_block(self) -> GrubEnv:
        if self._env is None:
            self._env = self._grubenv()
        return self._env

    def _include(self, words: list[_Word], scope: _Scope, builder: _EntryBuilder | None) -> None:
        args = [a for w in words[1:] for a in self._expand(w, scope, "path")]
        if not args:
            return
        if scope.depth >= MAX_INCLUDE_DEPTH:
            raise _Unknown(f"{scope.origin}: line {words[0].line}: includes nested deeper than {MAX_INCLUDE_DEPTH}")
        target = self._include_path(args[-1], scope)
        if target is None:
            raise _Unknown(f"{scope.origin}: line {words[0].line}: {words[0].literal} {_show(args[-1])}: not a file "
                           f"in {self.grub_dir}, so its entries cannot be read")
        if words[0].literal in ("source", "."):
            self.read_file(target, scope)  # the same scope: what it sets stays set
        else:
            self.read_file(target, scope.child())

    def _include_path(self, path: str, scope: _Scope) -> Path | None:
        """The file in the grub directory that an include names, or None when it names none there."""
        name = self.grub_dir.name
        rest: str | None = None
        for spelling in (_GRUB_DIR + "/", f"/{name}/", f"/boot/{name}/"):
            if path.startswith(spelling):
                rest = path[len(spelling):]
                break
        if rest is None:
            return None
        parts = [p for p in rest.split("/") if p not in ("", ".")]
        if not parts or ".." in parts or _GRUB_DIR in rest:
            return None
        real = Path(os.path.realpath(self.grub_dir.joinpath(*parts)))
        if Path(os.path.realpath(self.grub_dir)) not in real.parents:
            return None  # a symlink out of the grub directory
        return real

    def _blscfg(self, words: list[_Word], scope: _Scope, builder: _EntryBuilder | None) -> None:
        log.debug("%s: line %d: blscfg: GRUB makes entries of the BLS files in /boot/loader/entries at boot; "
                  "they are the BLS source's, not read here", scope.origin, words[0].line)

    def _load(self, name: str, words: list[_Word], scope: _Scope, builder: _EntryBuilder) -> None:
        if name in HYPERVISOR_COMMANDS or name in MODULE_COMMANDS:
            self._multiboot(name, words, scope, builder)
        elif name in KERNEL_COMMANDS:
            fields = self._expand(words[1], scope, "path") if len(words) > 1 else []
            options = fields[1:] + [a for w in words[2:] for a in self._expand(w, scope, "option")]
            if not fields:
                log.debug("%s: line %d: %s names no kernel", scope.origin, words[0].line, name)
                return
            builder.kernel = self._file(fields[0], FileRole.KERNEL, scope)
            builder.options = " ".join(options)
            builder.initrds = ()  # GRUB's linux unloads the initrds loaded before it
        elif name in INITRD_COMMANDS:
            paths = [a for w in words[1:] for a in self._expand(w, scope, "path")]
            paths = [p for p in paths if not p.startswith("--")]  # --newc:NAME:PATH is not followed
            builder.initrds = tuple(self._file(p, FileRole.INITRD, scope) for p in paths)
        elif name == "devicetree":
            paths = [a for w in words[1:] for a in self._expand(w, scope, "path")]
            builder.devicetree = self._file(paths[0], FileRole.DEVICETREE, scope) if paths else None
        else:  # chainloader [--force] FILE; +1 is a BIOS chain of sectors, no file
            paths = [a for w in words[1:] for a in self._expand(w, scope, "path") if not a.startswith("--")]
            if paths and not paths[0].startswith("+") and not paths[0].endswith(")+1"):
                builder.efi = self._file(paths[0], FileRole.EFI, scope)

    def _multiboot(self, name: str, words: list[_Word], scope: _Scope, builder: _EntryBuilder) -> None:
        """``multiboot2 /xen.gz placeholder ARGS``, ``module2 /vmlinuz placeholder ARGS``,
        ``module2 --nounzip /initrd.img``: the hypervisor, then the dom0 kernel, then its initrd.

        A module command loads one file; the words after it are its command line, whose first
        word (20_linux_xen's ``placeholder``) is its name. 20_linux_xen writes early microcode and
        the initrd on one ``module2`` line: GRUB then loads only the first, yet the second is named
        as needed too, in case a loader takes it; an entry needing one file more is only cached more.
        """
        args = [a for w in words[1:] for a in self._expand(w, scope, "path")]
        while args and args[0].startswith("--"):
            args.pop(0)  # --nounzip
        if not args:
            return
        if name in HYPERVISOR_COMMANDS:
            builder.kernel = self._file(args[0], FileRole.KERNEL, scope)
            builder.modules = ()
        elif not builder.modules:
            builder.modules = (self._file(args[0], FileRole.KERNEL, scope),)
            options = [a for w in words[1:] for a in self._expand(w, scope, "option") if not a.startswith("--")]
            builder.options = " ".join(options[2:])
        else:
            paths = [args[0], *(a for a in args[1:] if a.startswith("/"))]
            builder.modules += tuple(self._file(p, FileRole.INITRD, scope) for p in paths)

    def _file(self, path: str, role: FileRole, scope: _Scope) -> BootFile:
        root = scope.root
        if path.startswith("("):
            device, _, rest = path[1:].partition(")")
            path = rest
            if device != "$root" and device:
                root = _Root(device=device)
        path = re.sub("/{2,}", "/", path.replace(_GRUB_DIR, "$prefix"))
        kind = path_kind(path) if root.followed else PartitionKind.UNKNOWN
        partition = Partition(kind, root.fs_uuid, root.label, root.device, root.search_file)
        return BootFile(path, role, partition)

    # -- variables --

    def _expand(self, word: _Word, scope: _Scope, mode: _Mode, *, split: bool = True) -> list[str]:
        """The arguments ``word`` becomes: unquoted variables split at whitespace (GRUB does)."""
        fields: list[str] = []
        current: str | None = None
        for part in word.parts:
            if part.var is None:
                current = (current or "") + part.text
                continue
            value = self._value(part, scope, word.line, mode)
            if part.quoted or not split:
                current = (current or "") + value
                continue
            pieces = value.split()
            if not pieces:
                continue
            if value[0].isspace() and current is not None:
                fields.append(current)
                current = None
            current = (current or "") + pieces[0]
            for piece in pieces[1:]:
                fields.append(current)
                current = piece
            if value[-1].isspace():
                fields.append(current)
                current = None
        if current is not None:
            fields.append(current)
        return fields

    def _value(self, part: _Part, scope: _Scope, line: int, mode: _Mode) -> str:
        name = part.var or ""
        if name == "menuentry_id_option":
            return "--id"
        if name in ("prefix", "config_directory") and name not in scope.vars:
            return _GRUB_DIR
        if name == "root" and name not in scope.vars:
            return ""  # "($root)/vmlinuz": the partition the parser tracks (see _file)
        value = scope.vars.get(name)
        if value is not None:
            return value
        if mode == "value":
            return ""
        if scope.env_unknown is not None and mode == "path":
            raise _Unknown(f"{scope.origin}: line {line}: {part.text} in a path may come from the GRUB "
                           f"environment block, which is unknown: {scope.env_unknown}")
        if (scope.origin, name) not in self.logged:
            self.logged.add((scope.origin, name))
            if mode == "path":
                log.debug("%s: line %d: %s is not set; in a path GRUB expands it to nothing", scope.origin, line,
                          part.text)
            else:
                log.debug("%s: line %d: %s is not set here; kept as written in the options", scope.origin, line,
                          part.text)
        return "" if mode == "path" else part.text

    _HANDLERS: dict[str, Callable[[_Reader, list[_Word], _Scope, _EntryBuilder | None], None]] = {
        "set": _set,
        "unset": _unset,
        "search": _search,
        "search.fs_uuid": _search,
        "search.fs_label": _search,
        "search.file": _search,
        "load_env": _load_env,
        "configfile": _include,
        "source": _include,
        ".": _include,
        "normal": _include,
        "blscfg": _blscfg,
    }


def _block_kind(block: _Block) -> str | None:
    head = _strip_keywords(block.head)
    return head[0].literal if head else None


def _head_text(word: _Word) -> str:
    """The literal text a word starts with, up to its first variable."""
    text: list[str] = []
    for part in word.parts:
        if part.var is not None:
            break
        text.append(part.text)
    return "".join(text)


def _after_equals(word: _Word) -> _Word:
    """The value part of ``name=value``."""
    parts: list[_Part] = []
    found = False
    for part in word.parts:
        if found:
            parts.append(part)
        elif part.var is None and "=" in part.text:
            found = True
            rest = part.text.split("=", 1)[1]
            if rest or part.quoted:
                parts.append(_Part(rest, part.quoted))
    return _Word(tuple(parts), word.line)


def path_kind(path: str) -> PartitionKind:
    """What a path says about where it is, when nothing else does (see the module docstring)."""
    parts = PurePosixPath(path).parts[1:]
    if parts[:1] == ("boot",):
        return PartitionKind.ROOT
    if parts[:1] and parts[0].lower() == "efi":
        return PartitionKind.ESP
    if "boot" in parts[:-1] or "$prefix" in path or not path.startswith("/"):
        return PartitionKind.UNKNOWN  # a btrfs subvolume (/@/boot/...), or a path GRUB builds at boot
    return PartitionKind.BOOT


def _version_from_kernel(path: str) -> str | None:
    name = PurePosixPath(path).name
    for prefix in _KERNEL_PREFIXES:
        if name.startswith(prefix) and name[len(prefix):][:1].isdigit():
            return name[len(prefix):]
    return None


def _show(text: str) -> str:
    return text.replace(_GRUB_DIR, "$prefix")


def parse_grub_config(text: str, origin: Path, *, grubenv: GrubEnv | None = None) -> SourceResult:
    """The entries of the GRUB script ``text``, as if read from ``origin`` (includes are resolved
    next to it). ``grubenv`` is what ``load_env`` gives; by default the ``grubenv`` next to ``origin``."""
    return _read(origin, grubenv, text)


def read_grub_config(grub_cfg: Path, *, grubenv: GrubEnv | None = None) -> SourceResult:
    """The entries of ``grub_cfg`` and the files it includes (see the module docstring).

    ``grubenv``: the environment block ``load_env`` reads; by default ``grubenv`` in the same
    directory, read only if the configuration runs ``load_env``.
    """
    return _read(grub_cfg, grubenv, None)


def _read(grub_cfg: Path, grubenv: GrubEnv | None, text: str | None) -> SourceResult:
    env_path = grub_cfg.parent / "grubenv"
    reader = _Reader(grub_cfg.parent, (lambda: grubenv) if grubenv is not None else (lambda: read_grubenv(env_path)))
    try:
        if text is None:
            reader.read_file(grub_cfg, None)
        else:
            nodes = _parse(_Lexer(text).run())
            reader.reading.append(Path(os.path.realpath(grub_cfg)))
            reader.run(nodes, _Scope({}, _Root(), (), grub_cfg, 0))
    except GrubSyntaxError as e:
        return SourceResult.unreadable(EntrySource.GRUB, grub_cfg, f"{grub_cfg}: {e}; GRUB would not read this "
                                       "file as written")
    except _Unknown as e:
        return SourceResult.unreadable(EntrySource.GRUB, grub_cfg, str(e), tuple(reader.entries))
    return SourceResult(EntrySource.GRUB, grub_cfg, tuple(reader.entries))



def expand_words(text: str, variables: Mapping[str, str], *, paths: bool, origin: Path = Path("-"),
                 env_unknown: str | None = None) -> list[str]:
    """The arguments GRUB makes of ``text`` (a BLS ``initrd``/``options`` value, which Fedora's
    ``blscfg`` hands to GRUB's script engine) with ``variables`` (a ``grubenv``'s values).

    An unset variable is dropped from ``paths`` (GRUB expands it to nothing) and kept as written in
    options, with one debug line each. ``env_unknown``: why the variables may be incomplete (the
    block could not be read); a path that needs an unset variable is then :class:`ValueError`.
    """
    reader = _Reader(origin.parent, lambda: GrubEnv(origin))
    scope = _Scope(dict(variables), _Root(), (), origin, 0, env_unknown)
    try:
        words = [t for t in _Lexer(text).run() if isinstance(t, _Word)]
        return [a for w in words for a in reader._expand(w, scope, "path" if paths else "option")]
    except _Unknown as e:
        raise ValueError(str(e)) from None
