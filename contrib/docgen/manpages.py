"""bootwatch(8) from the command line's one definition and bootwatch.toml(5) from the configuration
schema. What neither holds (exit codes, files, signals, examples) is written here once, from the
constants of the modules that define it."""

from __future__ import annotations

import json
from collections.abc import Sequence

from bootwatch import __version__, errors
from bootwatch.cache.store import INDEX_NAME, LOCK_NAME
from bootwatch.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_RUNTIME,
    DURATION_BOUNDS,
    SCHEMA,
    Key,
    Section,
    ValueKind,
    format_duration,
)
from bootwatch.daemon.status import STATUS_NAME
from bootwatch.defaults import CONFIG_ENV, DEFAULT_CACHE_DIR, RUNTIME_ENV
from bootwatch.health.facts import FACTS_NAME
from bootwatch.prove.proof import PROOFS_DIR

from .commandline import Argument, Command, CommandLine, Value
from .roff import Page, bold, escape, italic, prose

SOURCE = f"bootwatch {__version__}"
DROPINS = f"{DEFAULT_CONFIG_PATH}.d"

# ---------------------------------------------------------------------------- bootwatch(8)

EXIT_STATUS = (
    (errors.EXIT_OK, "Success."),
    (errors.EXIT_FAILURE, "An operation failed, or verify, fsck, entries or prove found a problem; a cache "
                          "directory that does not exist, for the commands that only read the cache."),
    (errors.EXIT_USAGE, "A usage error: an unknown option, a PATH that is no boom-style path, an image id that "
                        "is not 40 lowercase hex digits (restore --image: 8 to 40 of them), a --boot-dir or "
                        "--cache-dir that does not exist or is a system directory."),
    (errors.EXIT_NOT_RUNNING, "status only: the daemon is not running."),
    (errors.EXIT_CONFIG, "A configuration error: the message names the file, the line and the [section] key."),
    (130, "Interrupted (SIGINT) while a command other than run was working."),
)

# The signals bootwatch run handles (daemon/service.py installs these handlers; a test checks).
SIGNALS = (
    ("SIGTERM", "Stop: the copy in progress is cancelled (its temp file removed), any wait for the cache lock "
                "ends, the status file is removed, and the daemon exits. systemctl stop sends it."),
    ("SIGINT", "As SIGTERM (Ctrl-C in a terminal)."),
    ("SIGHUP", "Read the configuration again (systemctl reload sends it). The daemon says RELOADING=1 and "
               "READY=1 to systemd around it; a configuration that does not validate is refused with one "
               "line naming the file, and the running one is kept."),
)

ENVIRONMENT = (
    (CONFIG_ENV, f"The configuration file when --config is not given (default {DEFAULT_CONFIG_PATH})."),
    (RUNTIME_ENV, f"The runtime directory when [paths] runtime is not set (systemd sets it for the unit's "
                  f"RuntimeDirectory=); else {DEFAULT_RUNTIME}."),
    ("BOOTWATCH_DEBUG", "When set, an internal error shows its traceback instead of one line."),
    ("BOOTWATCH_PIN_0, BOOTWATCH_PIN_1, ...", "Set by pin for the command it runs: the pinned files."),
)

FILES = (
    (str(DEFAULT_CONFIG_PATH), "The configuration; see bootwatch.toml(5). Not needed: with no file the embedded "
                               "defaults apply."),
    (f"{DROPINS}/*.toml", "Drop-ins, merged key by key in lexical order."),
    (DEFAULT_CACHE_DIR, "The cache ([paths] cache), boom-compatible: <sha1>.img images, one per content."),
    (f"{DEFAULT_CACHE_DIR}/{INDEX_NAME}", "The index: the cached paths and their images, written atomically."),
    (f"{DEFAULT_CACHE_DIR}/{LOCK_NAME}", "The lock every writer of the cache takes."),
    ("/boot/.NAME.boomrestored", "Marks a boot file that was restored from the cache (as boom marks it)."),
    (str(DEFAULT_RUNTIME), "The runtime directory ([paths] runtime): state that does not outlive a boot."),
    (f"{DEFAULT_RUNTIME}/{STATUS_NAME}", "What the running daemon found and did, read by status."),
    (f"{DEFAULT_RUNTIME}/{FACTS_NAME}", "What each image's check found (its format, a kernel's release, an "
                                        "initramfs's modules), by the image's stat signature: an unchanged image "
                                        "is not read again."),
    (f"{DEFAULT_RUNTIME}/{PROOFS_DIR}/", "The last boot proof of each entry (<name>.json) and its serial console "
                                         "(<name>.log), written by prove and by the daemon ([prove] on_new_kernel)."),
)

# Each command line short enough for a 60-column terminal (a long one goes on, after && or a backslash).
EXAMPLES = (
    ("Which boot entries the host has, from every source, and what the cache holds of them:",
     ("bootwatch entries",)),
    ("Cache everything the entries name, once, as the daemon does when it starts:", ("bootwatch scan",)),
    ("What the cache holds:", ("bootwatch list",)),
    ("Put a removed kernel back:", ("bootwatch restore /vmlinuz-6.1.0-18-amd64",)),
    ("Re-hash every cached image and check it:", ("bootwatch verify",)),
    ("What a clean would remove, without removing it:", ("bootwatch clean --dry-run",)),
    ("Boot every entry in a throwaway VM:", ("bootwatch prove --all",)),
    ("Copy a kernel elsewhere while no clean can remove its image:",
     ("bootwatch pin --path /vmlinuz-6.1.0-18-amd64 -- \\",
      "    sh -c 'cp \"$BOOTWATCH_PIN_0\" /srv/kernels/'")),
    ("Check a configuration before reloading the daemon with it:",
     ("bootwatch check-config &&", "    systemctl reload bootwatch")),
    ("The daemon's state, and its log with explanations:", ("bootwatch status", "journalctl -u bootwatch -x")),
)


def _synopsis_of(argument: Argument) -> str:
    if argument.positional:
        text = italic(argument.metavar or "")
        if argument.remainder:
            text = escape(argument.metavar or "")
        elif argument.many:
            text += "\\&..."
        return f"[{text}]" if argument.optional else text
    option = bold(argument.options[-1])
    if argument.metavar is not None:
        option += " " + italic(argument.metavar)
    return f"[{option}]" + ("\\&..." if argument.repeated else "")


def synopsis(cli: CommandLine, command: Command) -> str:
    words = [bold(cli.prog), bold(command.name)]
    words += [_synopsis_of(a) for a in command.options()]
    words += [_synopsis_of(a) for a in command.positionals()]
    return " ".join(words)


def _tag(argument: Argument) -> str:
    if argument.positional:
        return italic(argument.metavar or "")
    names = ", ".join(bold(o) for o in argument.options)
    return names + (" " + italic(argument.metavar) if argument.metavar is not None else "")


# What an argument is when the parser gives it no help of its own.
VALUE_HELP = {
    Value.CACHED_PATH: "a cached path: boom-style (/vmlinuz-6.1.0, relative to the boot directory) or an absolute "
                       "path in the boot directory ('bootwatch list' shows them)",
    Value.IMAGE_ID: "an image id: the 40 hex digits of its SHA-1 ('bootwatch show PATH' shows them)",
    Value.ENTRY_ID: "a boot entry's id, as 'bootwatch entries' shows it",
}


def sentence(text: str, *, keep: tuple[str, ...] = ()) -> str:
    """``text`` begun with a capital and ended with a full stop; a first word in ``keep`` (a value
    to be typed as it is, like "auto:") keeps its case."""
    text = text.strip()
    if not text.startswith(tuple(f"{word}:" for word in keep)):
        text = text[:1].upper() + text[1:]
    return text + ("" if not text or text.endswith((".", "...")) else ".")


def _argument_help(argument: Argument) -> str:
    parts = [argument.help or VALUE_HELP.get(argument.value, "")]
    if argument.value is Value.CHOICE and argument.choices:
        parts.append("one of: " + ", ".join(argument.choices))
    if argument.repeated and "repeatable" not in argument.help:
        parts.append("may be given more than once")
    return " ".join(prose(sentence(p, keep=argument.choices)) for p in parts if p)


def bootwatch_8(cli: CommandLine, date: str) -> str:
    page = Page(cli.prog, 8, date, SOURCE, "System Administration")
    page.section("name")
    summary = cli.description.rstrip(".")
    page.paragraph(f"{escape(cli.prog)} \\- {escape(summary[:1].lower() + summary[1:])}")
    page.section("synopsis")
    common = " ".join(_synopsis_of(a) for a in cli.common_options)
    page.paragraph(f"{bold(cli.prog)} {common} {italic('COMMAND')} [{italic('OPTIONS')}] [{italic('ARGUMENTS')}]")
    page.section("description")
    page.paragraph(
        escape("bootwatch keeps every boot entry of a Linux host bootable. It watches the boot directory and the "
               "host's boot entries (BLS entries, unified kernel images, GRUB's grub.cfg) with inotify and keeps "
               "a copy of every kernel, initramfs and image those entries name, in a cache that boom(8) reads "
               "and writes too. When a package manager removes a file that an entry still needs, the daemon "
               "puts it back; when a cached copy rots, it copies it again while the boot directory still holds "
               "a good one."),
    )
    page.paragraph(
        prose("The daemon is 'bootwatch run', normally started by systemd (bootwatch.service, Type=notify). The "
               "other commands inspect and maintain the cache; the package manager hooks run 'bootwatch scan'. "
               "Every PATH below is boom-style, relative to the boot directory (/vmlinuz-6.1.0), or an absolute "
               "path inside the boot directory."))
    page.section("options")
    for argument in cli.global_options:
        page.item(_tag(argument), _argument_help(argument))
    page.paragraph(escape("Every command takes these common options, before or after its name:"))
    for argument in cli.common_options:
        page.item(_tag(argument), _argument_help(argument))
    page.section("commands")
    for command in cli.commands:
        page.subsection(f"{cli.prog} {command.name}")
        page.paragraph(synopsis(cli, command))
        page.paragraph(prose(sentence(command.help)))
        for argument in command.arguments:
            page.item(_tag(argument), _argument_help(argument))
    page.section("exit status")
    for code, meaning in EXIT_STATUS:
        page.item(bold(str(code)), escape(meaning))
    page.paragraph(escape("Errors are one line on standard error naming the file and the problem, often with a "
                          "hint; never a traceback."))
    page.section("signals")
    page.paragraph(escape("bootwatch run handles:"))
    for name, meaning in SIGNALS:
        page.item(bold(name), escape(meaning))
    page.paragraph(escape("Under systemd the unit's watchdog (WatchdogSec=) restarts a daemon that stops making "
                          "progress."))
    page.section("environment")
    for name, meaning in ENVIRONMENT:
        page.item(bold(name), escape(meaning))
    page.section("files")
    for name, meaning in FILES:
        page.item(italic(name), escape(meaning))
    page.section("examples")
    for comment, command_line in EXAMPLES:
        page.example(comment, command_line)
    page.section("see also")
    page.paragraph(see_also(("bootwatch.toml", 5), ("boom", 8), ("kernel-install", 8), ("systemctl", 1),
                            ("journalctl", 1)))
    return page.text()


def see_also(*pages: tuple[str, int]) -> str:
    return ",\n".join(f"{bold(name)}({number})" for name, number in pages)


# ---------------------------------------------------------------------------- bootwatch.toml(5)

KIND_TYPES = {
    ValueKind.PATH: "absolute path",
    ValueKind.OPTIONAL_PATH: "absolute path, or \"\" for none",
    ValueKind.DIRECTORY: "absolute path, or \"\" for none",
    ValueKind.ENUM: "string",
    ValueKind.PATTERNS: "list of glob strings",
    ValueKind.PATHS: "list of absolute paths",
    ValueKind.INT: "integer",
    ValueKind.BOOL: "boolean",
    ValueKind.SOURCES: "\"auto\" or a list of strings",
    ValueKind.DURATION: "duration",
    ValueKind.LEVEL: "string",
}


def toml_value(value: object) -> str:
    """A default as it is written in the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def key_type(key: Key) -> str:
    text = KIND_TYPES.get(key.kind, key.kind.value.replace("_", " "))
    bounds = DURATION_BOUNDS.get(key.name) if key.kind is ValueKind.DURATION else None
    if bounds is not None:
        text += f", from {format_duration(bounds[0])} to {format_duration(bounds[1])}"
    return text


def key_lines(key: Key) -> Sequence[str]:
    lines = [prose(key.help)]
    if key.default is not None:
        lines.append(escape("Default: ") + bold(toml_value(key.default)) + ".")
    return lines


def bootwatch_toml_5(date: str, schema: Sequence[Section] = SCHEMA) -> str:
    page = Page("bootwatch.toml", 5, date, SOURCE, "File Formats")
    page.section("name")
    page.paragraph(f"{escape('bootwatch.toml')} \\- {escape('configuration of bootwatch(8)')}")
    page.section("synopsis")
    page.lines_of(italic(str(DEFAULT_CONFIG_PATH)), italic(f"{DROPINS}/*.toml"))
    page.section("description")
    page.paragraph(escape(
        f"bootwatch reads its configuration from {DEFAULT_CONFIG_PATH} (or the file named by --config or "
        f"${CONFIG_ENV}), then the drop-ins {DROPINS}/*.toml in lexical order of their names, as systemd "
        "sorts its drop-ins. They apply even when the main file is absent; with no file at all the embedded "
        "defaults below apply."))
    page.paragraph(escape(
        "Each file is merged key by key: a drop-in that sets one key changes that key and nothing else. A list "
        "is one value: a drop-in replaces the whole list. An optional path set to \"\" is not set, so a drop-in "
        "can undo an earlier one. A drop-in that is a symbolic link to /dev/null is masked, as in systemd."))
    page.paragraph(escape(
        "Validation is strict: an unknown section or key, a wrong type, a duration outside its bounds, a relative "
        "path or a TOML syntax error is an error (exit status 78) in one line naming the file, the line, the "
        "[section] key, what was expected and what was found. The daemon refuses to start with such a file; a "
        "reload (SIGHUP) with one keeps the running configuration. bootwatch check-config validates a file and "
        "prints the effective configuration."))
    page.paragraph(escape(
        "Durations are strings of one or more <number><unit> terms, units ms, s, m, h and d: \"250ms\", \"1.5s\", "
        "\"1h30m\". Plain numbers are refused. The boot, cache and runtime directories may not be / or a system "
        "directory, nor lie in /proc, /sys or /dev; the cache may not be the boot directory nor hold it."))
    for section in schema:
        page.section(f"[{section.name}]", upper=False)
        for key in section.keys:
            page.item(f"{bold(key.name)} ({escape(key_type(key))})", *key_lines(key))
    page.section("example")
    page.lines.extend([".PP", ".RS 4", ".nf"])
    page.lines.extend(escape(line) for line in (
        f"# {DROPINS}/50-local.toml",
        "[cache]",
        "keep = 3",
        "",
        "[watch]",
        'settle = "1s"',
    ))
    page.lines.extend([".fi", ".RE"])
    page.section("see also")
    page.paragraph(see_also(("bootwatch", 8), ("systemd.unit", 5)))
    return page.text()
