"""bootwatch's command line read from its one definition (bootwatch.cli.parser.build_parser) into
plain records that the man page and the completion are generated from."""

from __future__ import annotations

import argparse
import enum
from dataclasses import dataclass

from bootwatch.cli.parser import build_parser

COMMON_GROUP = "common options"


class Value(enum.Enum):
    """What an argument's value is, and so how it is completed."""

    NONE = "none"  # a flag
    WORD = "word"  # free text (a number, a duration): nothing to complete
    CHOICE = "choice"  # one of the argument's choices
    FILE = "file"
    DIRECTORY = "directory"
    CACHED_PATH = "cached path"  # a path of the cache's index, boom-style (/vmlinuz-6.1.0)
    IMAGE_ID = "image id"  # an image of the cache's index
    ENTRY_ID = "entry id"  # a boot entry, as 'bootwatch entries' names it
    COMMAND = "command"  # a command and its arguments (pin -- COMMAND)


# The parser's metavars say what a value is; this is their one reading. A metavar missing here is
# completed as a WORD, and tests/contrib/test_docgen.py fails until it is added.
METAVAR_VALUES = {
    "FILE": Value.FILE,
    "DIR": Value.DIRECTORY,
    "PATH": Value.CACHED_PATH,
    "P": Value.CACHED_PATH,
    "ID": Value.IMAGE_ID,
    "ENTRY": Value.ENTRY_ID,
    "SECONDS": Value.WORD,
    "MIB": Value.WORD,
    "-- COMMAND [ARGS]": Value.COMMAND,
}
# `add` takes files of the boot directory that are not cached yet: its PATH is a file name.
COMMAND_VALUES = {("add", "paths"): Value.FILE}


@dataclass(frozen=True)
class Argument:
    options: tuple[str, ...]  # empty: a positional argument
    dest: str
    metavar: str | None  # None: a flag
    help: str
    value: Value
    choices: tuple[str, ...] = ()
    repeated: bool = False  # an option that may be given more than once
    many: bool = False  # a positional that takes one or more (or, with optional, zero or more)
    optional: bool = False  # a positional that may be left out
    remainder: bool = False  # everything after it is its value (pin's COMMAND)

    @property
    def positional(self) -> bool:
        return not self.options


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: tuple[Argument, ...]  # in the parser's order, without the common options and --help

    def options(self) -> tuple[Argument, ...]:
        return tuple(a for a in self.arguments if not a.positional)

    def positionals(self) -> tuple[Argument, ...]:
        return tuple(a for a in self.arguments if a.positional)


@dataclass(frozen=True)
class CommandLine:
    prog: str
    description: str
    global_options: tuple[Argument, ...]  # --help, --version
    common_options: tuple[Argument, ...]  # taken by every command, before or after its name
    commands: tuple[Command, ...]


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if text == argparse.SUPPRESS:
        return ""
    if "%(" in text:  # argparse's own expansion, as --help prints it
        params = {**vars(action), "prog": prog}
        params = {k: getattr(v, "__name__", v) for k, v in params.items()}
        text = text % params
    return " ".join(text.split())


def _value(action: argparse.Action, command: str) -> Value:
    if action.nargs == 0:
        return Value.NONE
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        return Value.CHOICE
    override = COMMAND_VALUES.get((command, action.dest))
    if override is not None:
        return override
    metavar = action.metavar if isinstance(action.metavar, str) else None
    return METAVAR_VALUES.get(metavar or "", Value.WORD)


def _argument(action: argparse.Action, command: str, prog: str) -> Argument:
    value = _value(action, command)
    metavar: str | None = None
    if value is not Value.NONE:
        metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
        if value is Value.CHOICE and action.metavar is None:
            metavar = "{" + ",".join(str(c) for c in action.choices or ()) + "}"
    return Argument(
        options=tuple(action.option_strings), dest=action.dest, metavar=metavar, help=_help(action, prog),
        value=value, choices=tuple(str(c) for c in action.choices or ()) if value is Value.CHOICE else (),
        repeated=isinstance(action, argparse._AppendAction),
        many=action.nargs in ("+", "*", argparse.REMAINDER),
        optional=action.nargs in ("?", "*"),
        remainder=action.nargs == argparse.REMAINDER,
    )


def _is_help(action: argparse.Action) -> bool:
    return isinstance(action, argparse._HelpAction)


def _common_dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for g in parser._action_groups if g.title == COMMON_GROUP for a in g._group_actions}


def read_command_line(parser: argparse.ArgumentParser | None = None) -> CommandLine:
    """The command line as records: ``parser`` (default: bootwatch's own)."""
    parser = parser or build_parser()
    prog = parser.prog
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    common = _common_dests(parser)
    helps = {a.dest: _help(a, prog) for a in subparsers._choices_actions}
    commands = []
    for name, sub in subparsers.choices.items():
        if not isinstance(sub, argparse.ArgumentParser):
            continue
        if _common_dests(sub) != common:
            raise ValueError(f"{prog} {name}: its common options differ from the top level's")
        arguments = tuple(_argument(a, name, prog) for a in sub._actions
                          if not _is_help(a) and a.dest not in common)
        commands.append(Command(name=name, help=helps.get(name, ""), arguments=arguments))
    top = [a for a in parser._actions if a is not subparsers]
    return CommandLine(
        prog=prog,
        description=" ".join((parser.description or "").split()),
        global_options=tuple(_argument(a, "", prog) for a in top if a.dest not in common),
        common_options=tuple(_argument(a, "", prog) for a in top if a.dest in common),
        commands=tuple(commands),
    )
