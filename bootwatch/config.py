"""The daemon's configuration: TOML in /etc, drop-ins merged like systemd's, strict validation.

Where the configuration comes from, in order:

1. the embedded defaults (:data:`EMBEDDED_DEFAULTS`), so that no file at all is a valid setup;
2. the main file: the ``path`` argument (``--config``), else ``$BOOTWATCH_CONFIG`` when it is set
   and not empty, else ``/etc/bootwatch/bootwatch.toml``. Only the last one may be missing: a
   file that was named explicitly must exist;
3. the drop-ins ``<main file>.d/*.toml`` in lexical order of their names, as systemd sorts
   ``*.conf`` drop-ins. They apply even when the main file is absent.

Each file is merged *key by key*: a drop-in that sets ``[watch] settle`` changes that key and
nothing else. A list (``[cache] patterns``) is one value: a drop-in replaces the whole list.
``[metrics] textfile = ""`` resets the text file to "not set", so a drop-in can undo an earlier one.

Every value is checked in the file that set it, so an error names the file that is wrong, the line
of the key, the ``[section] key``, what was expected and what was found, in one line::

    /etc/bootwatch/bootwatch.toml:7: [watch] settle: expected a duration like "250ms", "30s",
    "15m", "1h" or "1d", found "fast"

Durations are strings of one or more ``<number><unit>`` terms, units ``ms``, ``s``, ``m``, ``h``
and ``d``, for example ``"250ms"``, ``"1.5s"`` or ``"1h30m"``. Plain numbers are refused: ``30``
could be seconds or milliseconds, and a config should not make the reader guess. Each duration
has bounds (:data:`DURATION_BOUNDS`): a value outside them is a mistake, not a setting (a settle
of days stops the daemon from acting; an interval of a billion days overflows the scheduler).

``[paths] boot``, ``cache`` and ``runtime`` may not be ``/`` or a system directory
(:data:`SYSTEM_DIRECTORIES`), nor lie in the kernel's virtual filesystems (/proc, /sys, /dev);
the cache may not be the boot directory nor hold it (a cache inside the boot directory is
boom's own layout, /boot/boom/cache, and fine). A file that breaks a rule is a configuration
error (exit 78, naming the file); ``--boot-dir`` and ``--cache-dir`` that break one are a usage
error (exit 2, naming the option), see :meth:`Config.with_overrides`.

``[paths] entries`` defaults to ``<boot>/loader/entries`` and follows ``boot`` (also through
:meth:`Config.with_overrides`) unless a file sets it. ``[paths] runtime`` defaults to
``$RUNTIME_DIRECTORY`` (its first entry; systemd sets it for ``RuntimeDirectory=``), else
``/run/bootwatch``, unless a file sets it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

from bootwatch.defaults import CONFIG_ENV, DEFAULT_CACHE_DIR, RUNTIME_ENV
from bootwatch.entries.model import EntrySource
from bootwatch.enums import TextEnum
from bootwatch.errors import ConfigError, FileTooLargeError, NotRegularFileError, UsageError
from bootwatch.pkgtxn import LockKind, PackageLock, default_paths, package_locks
from bootwatch.prove.vm import (
    DEFAULT_TIMEOUT,
    MEMORY_BOUNDS_MIB,
    MIN_MEMORY_MIB,
    TIMEOUT_BOUNDS,
    AccelChoice,
    VmLimits,
)
from bootwatch.safety import read_regular

DEFAULT_CONFIG_PATH = Path("/etc/bootwatch/bootwatch.toml")
DEFAULT_RUNTIME = Path("/run/bootwatch")



class Track(TextEnum):
    """``[cache] track``: which boot files are cached (see bootwatch.cache.policy)."""

    REFERENCED = "referenced"  # what a BLS entry names
    ALL = "all"  # also every file of the boot directory that matches [cache] patterns


TRACK_VALUES = tuple(track.value for track in Track)
LOG_LEVELS = ("debug", "info", "notice", "warning", "error")

DURATION_EXAMPLES = '"250ms", "30s", "15m", "1h" or "1d"'
# Longest unit first, so that "ms" is never read as "m" followed by garbage.
_DURATION_UNITS = (("ms", 0.001), ("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0))
_DURATION_TERM = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")

# The bounds of each duration, in seconds: (shortest, longest).
DURATION_BOUNDS: Mapping[str, tuple[float, float]] = MappingProxyType({
    "settle": (0.001, 600.0),                  # 1ms .. 10m
    "transaction_timeout": (1.0, 86400.0),     # 1s .. 1d
    "rescan_interval": (1.0, 7 * 86400.0),     # 1s .. 7d
    "clean_interval": (1.0, 30 * 86400.0),     # 1s .. 30d
    "gc_interval": (1.0, 86400.0),             # 1s .. 1d
    "verify_interval": (1.0, 365 * 86400.0),   # 1s .. 365d
    "timeout": TIMEOUT_BOUNDS,                 # [prove]: 1s .. 1d, as bootwatch prove --timeout
})

# Directories that are never a boot, cache or runtime directory: / and the system's own. Their
# subdirectories are fine (the default cache is /var/lib/bootwatch/cache), except in the kernel's
# virtual filesystems (VIRTUAL_TREES).
SYSTEM_DIRECTORIES = frozenset(map(Path, (
    "/", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/usr/bin", "/usr/sbin", "/usr/lib",
    "/usr/local", "/etc", "/var", "/var/lib", "/home", "/root", "/tmp", "/var/tmp", "/run", "/srv", "/opt", "/mnt",
    "/media", "/proc", "/sys", "/dev")))
VIRTUAL_TREES = tuple(map(Path, ("/proc", "/sys", "/dev")))

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# The effective configuration


@dataclasses.dataclass(frozen=True)
class PathsConfig:
    boot: Path
    entries: Path
    cache: Path
    runtime: Path
    # True when a file set ``entries``; otherwise it follows ``boot`` in with_overrides().
    entries_explicit: bool = dataclasses.field(default=False, repr=False)


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    track: Track
    patterns: tuple[str, ...]
    keep: int
    auto_restore: bool


@dataclasses.dataclass(frozen=True)
class WatchConfig:
    settle: float  # seconds
    rescan_interval: float  # seconds
    # The lock files that show a package manager's transaction (bootwatch.pkgtxn), by kind.
    package_locks: tuple[Path, ...]
    package_pid_files: tuple[Path, ...]
    package_lock_files: tuple[Path, ...]
    transaction_timeout: float  # seconds

    def locks(self) -> tuple[PackageLock, ...]:
        """Every lock file to look at before deciding about removed files, in the order given."""
        return package_locks(self.package_locks, self.package_pid_files, self.package_lock_files)


@dataclasses.dataclass(frozen=True)
class LogConfig:
    level: str


@dataclasses.dataclass(frozen=True)
class JobsConfig:
    clean_interval: float  # seconds
    gc_interval: float  # seconds
    verify_interval: float  # seconds


@dataclasses.dataclass(frozen=True)
class EntriesConfig:
    sources: tuple[EntrySource, ...] | None  # None: "auto"
    esp: Path | None


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    textfile: Path | None


@dataclasses.dataclass(frozen=True)
class ProveConfig:
    """The boot proof's bounds (``bootwatch prove``'s defaults too) and the daemon's proof job."""

    on_new_kernel: bool
    timeout: float  # seconds
    memory: int | None  # MiB; None: from the initramfs's size
    accel: AccelChoice

    def limits(self) -> VmLimits:
        return VmLimits(timeout=self.timeout, memory_mib=self.memory)


@dataclasses.dataclass(frozen=True)
class Config:
    paths: PathsConfig
    cache: CacheConfig
    watch: WatchConfig
    log: LogConfig
    jobs: JobsConfig
    metrics: MetricsConfig
    entries: EntriesConfig
    prove: ProveConfig
    # The files that were read, main file first, then the drop-ins in the order applied.
    sources: tuple[Path, ...] = ()

    def with_overrides(self, boot: Path | None = None,
                       cache: Path | None = None) -> Config:
        """The configuration with the command line's ``--boot-dir`` / ``--cache-dir`` applied.

        When ``boot`` changes and no file set ``entries``, ``entries`` moves with it.
        """
        paths = self.paths
        for option, value in (("--boot-dir", boot), ("--cache-dir", cache)):
            if value is None:
                continue
            problem = system_directory_problem(_absolute_override(value))
            if problem is not None:
                raise UsageError(f"{option}: expected a directory of bootwatch's own, not {problem}",
                                 path=_absolute_override(value))
        if boot is not None:
            boot = _absolute_override(boot)
            entries = paths.entries if paths.entries_explicit else boot / "loader" / "entries"
            paths = dataclasses.replace(paths, boot=boot, entries=entries)
        if cache is not None:
            paths = dataclasses.replace(paths, cache=_absolute_override(cache))
        problem = layout_problem(paths.boot, paths.cache) if boot is not None or cache is not None else None
        if problem is not None:
            raise UsageError(f"--boot-dir/--cache-dir: {problem}")
        return dataclasses.replace(self, paths=paths)

    def without_restores(self) -> Config:
        """The configuration with ``[cache] auto_restore`` off, for ``scan --no-restore``: the
        package hooks' pass when a kernel is removed, which caches and forgets but leaves the
        decision to restore to the daemon, once the package manager's transaction has ended."""
        return dataclasses.replace(self, cache=dataclasses.replace(self.cache, auto_restore=False))

    def to_toml(self) -> str:
        """The effective configuration as TOML that :func:`load_config` reads back unchanged.

        ``entries`` and ``runtime`` are written out even when they were derived, so the output
        shows what the daemon really uses; a value that is not set is a comment.
        """
        lines = ["# bootwatch: effective configuration"]
        if self.sources:
            lines.append("# read from: " + ", ".join(str(s) for s in self.sources))
        else:
            lines.append("# read from: (no file, embedded defaults)")
        for section in SCHEMA:
            lines.append("")
            lines.append(f"[{section.name}]")
            group = getattr(self, section.name)
            for key in section.keys:
                value = getattr(group, key.name)
                if value is None and key.kind is ValueKind.SOURCES:
                    value = SOURCES_AUTO
                if value is None:
                    lines.append(f"# {key.name} is not set")
                else:
                    lines.append(f"{key.name} = {_render(key.kind, value)}")
        return "\n".join(lines) + "\n"


def _absolute_override(path: Path) -> Path:
    # The command line may give a relative path: it means relative to the working directory.
    return Path(os.path.abspath(path))


# --------------------------------------------------------------------------------------------
# Values: parsing and rendering


class DurationTooLong(ValueError):
    """A duration beyond any float: out of every bound."""


def parse_duration(text: str) -> float:
    """``"1h30m"`` -> 5400.0 seconds. Raises ValueError for anything else, or for zero."""
    pos = 0
    total = 0.0
    if not text:
        raise ValueError("empty duration")
    for match in _DURATION_TERM.finditer(text):
        if match.start() != pos:
            raise ValueError(f"bad duration {text!r}")
        total += float(match.group(1)) * dict(_DURATION_UNITS)[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"bad duration {text!r}")
    if not math.isfinite(total):
        raise DurationTooLong(f"duration {text!r} is too long")
    if not total > 0:
        raise ValueError(f"duration {text!r} is not greater than zero")
    return total


def format_duration(seconds: float) -> str:
    """The shortest canonical spelling: 0.25 -> ``"250ms"``, 5400 -> ``"1h30m"``."""
    millis = round(seconds * 1000, 6)
    if millis != int(millis):
        # Below a millisecond: keep every digit, in seconds.
        return f"{seconds!r}s"
    millis = int(millis)
    parts = []
    for unit, factor in (("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000),
                         ("ms", 1)):
        count, millis = divmod(millis, factor)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _render(kind: ValueKind, value: Any) -> str:
    if kind is ValueKind.DURATION:
        return json.dumps(format_duration(value))
    if kind is ValueKind.BOOL:
        return "true" if value else "false"
    if kind is ValueKind.INT:
        return str(value)
    if kind in (ValueKind.PATTERNS, ValueKind.PATHS):
        return "[" + ", ".join(json.dumps(str(p)) for p in value) + "]"
    if kind is ValueKind.SOURCES and not isinstance(value, str):
        return "[" + ", ".join(json.dumps(s.value if isinstance(s, EntrySource) else s) for s in value) + "]"
    # Paths and strings. JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(str(value))


def _describe(value: Any) -> str:
    """A found value as the reader typed it, in TOML spelling."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"{value!r} (a number)"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    return f"{value} (a {type(value).__name__})"  # dates and times


# Each validator takes the raw TOML value and returns the typed value or raises _Invalid.
class _Invalid(Exception):
    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def _check_path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise _Invalid("an absolute path as a string")
    if "\0" in value or not value.startswith("/"):
        raise _Invalid("an absolute path")
    # normpath: "/boot/" and "/boot//x" name the same directory as "/boot" and "/boot/x".
    return Path(os.path.normpath(value))


def system_directory_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a boot, cache or runtime directory, or None if it can."""
    if path in SYSTEM_DIRECTORIES:
        return "/ or a system directory" if path == Path("/") else "a system directory"
    if any(path.is_relative_to(tree) for tree in VIRTUAL_TREES):
        return "inside a virtual filesystem (/proc, /sys or /dev)"
    return None


def _check_directory(value: Any) -> Path:
    path = _check_path(value)
    problem = system_directory_problem(path)
    if problem is not None:
        raise _Invalid(f"a directory of bootwatch's own, not {problem}")
    return path


def layout_problem(boot: Path, cache: Path) -> str | None:
    """Why the cache cannot be where it is relative to the boot directory, or None."""
    if cache == boot:
        return f"the cache directory {cache} is the boot directory"
    if boot.is_relative_to(cache):
        return f"the boot directory {boot} is inside the cache directory {cache}"
    return None


def _check_optional_path(value: Any) -> Path | None:
    if value == "":
        return None
    if not isinstance(value, str) or "\0" in value or not value.startswith("/"):
        raise _Invalid('an absolute path ending in ".prom", or "" for none')
    if not value.endswith(".prom"):
        # node_exporter's textfile collector reads *.prom and silently ignores anything else.
        raise _Invalid('an absolute path ending in ".prom" (node_exporter reads only *.prom)')
    return Path(os.path.normpath(value))


SOURCES_AUTO = "auto"
SOURCE_NAMES = tuple(s.value for s in EntrySource)


def _check_sources(value: Any) -> tuple[EntrySource, ...] | str:
    expected = f'"{SOURCES_AUTO}" or a list of ' + ", ".join(json.dumps(n) for n in SOURCE_NAMES)
    if value == SOURCES_AUTO:
        return SOURCES_AUTO
    if not isinstance(value, (list, tuple)) or not value or \
            not all(isinstance(v, str) and v in SOURCE_NAMES for v in value):
        raise _Invalid(expected)
    return tuple(EntrySource(v) for v in dict.fromkeys(value))


def _check_optional_directory(value: Any) -> Path | None:
    if value == "":
        return None
    if not isinstance(value, str) or "\0" in value or not value.startswith("/"):
        raise _Invalid('an absolute path, or "" for none')
    return Path(os.path.normpath(value))


def _check_track(value: Any) -> Track:
    if value not in TRACK_VALUES:
        raise _Invalid('"referenced" or "all"')
    return Track(value)


def _check_patterns(value: Any) -> tuple[str, ...]:
    # A TOML array is a list; the embedded default is a tuple so that it cannot be modified.
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p for p in value):
        raise _Invalid('a list of glob strings like ["vmlinuz-*"]')
    return tuple(value)


def _check_paths(value: Any) -> tuple[Path, ...]:
    """A list of absolute paths (empty: none). A TOML array is a list; a default is a tuple."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise _Invalid('a list of absolute paths like ["/var/lib/dpkg/lock"], or [] for none')
    try:
        return tuple(_check_path(p) for p in value)
    except _Invalid:
        raise _Invalid('a list of absolute paths like ["/var/lib/dpkg/lock"], or [] for none') from None


def _check_keep(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid("an integer of at least 1")
    return value


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


def _check_duration(value: Any) -> float:
    if not isinstance(value, str):
        raise _Invalid(f"a duration string like {DURATION_EXAMPLES}")
    try:
        return parse_duration(value)
    except DurationTooLong:
        return math.inf
    except ValueError:
        if _DURATION_TERM.fullmatch(value) or re.fullmatch(rf"(?:{_DURATION_TERM.pattern})+",
                                                           value):
            raise _Invalid(f"a duration greater than zero, like {DURATION_EXAMPLES}") from None
        raise _Invalid(f"a duration like {DURATION_EXAMPLES}") from None


def _bounded_duration(name: str) -> Callable[[Any], float]:
    low, high = DURATION_BOUNDS[name]

    def check(value: Any) -> float:
        seconds = _check_duration(value)
        if not low <= seconds <= high:
            raise _Invalid(f"a duration from {format_duration(low)} to {format_duration(high)}")
        return seconds
    return check


def _check_memory(value: Any) -> int | None:
    low, high = MEMORY_BOUNDS_MIB
    if value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Invalid(f'a number of MiB from {low} to {high}, or "" for the default')
    return value


def _check_accel(value: Any) -> AccelChoice:
    if not isinstance(value, str) or value not in {a.value for a in AccelChoice}:
        raise _Invalid("one of " + ", ".join(json.dumps(a.value) for a in AccelChoice))
    return AccelChoice(value)


def _check_level(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise _Invalid("one of " + ", ".join(json.dumps(v) for v in LOG_LEVELS))
    return value.lower()


# --------------------------------------------------------------------------------------------
# The schema: every section and key, with its default and what it does


class ValueKind(TextEnum):
    """What a key's value is: how it is checked, rendered and explained."""

    PATH = "path"
    OPTIONAL_PATH = "optional_path"
    ENUM = "enum"
    PATTERNS = "patterns"
    PATHS = "paths"
    INT = "int"
    BOOL = "bool"
    SOURCES = "sources"
    DIRECTORY = "directory"
    DURATION = "duration"
    LEVEL = "level"


@dataclasses.dataclass(frozen=True)
class Key:
    name: str
    kind: ValueKind
    check: Callable[[Any], Any]
    default: Any  # the TOML value; None: derived or not set (see the help)
    help: str


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    keys: tuple[Key, ...]

    def key(self, name: str) -> Key | None:
        return next((k for k in self.keys if k.name == name), None)


SCHEMA: tuple[Section, ...] = (
    Section("paths", (
        Key("boot", ValueKind.PATH, _check_directory, "/boot",
            "The boot directory that holds the images and the BLS entries."),
        Key("entries", ValueKind.PATH, _check_path, None,
            'The BLS entries directory. Default: "<boot>/loader/entries", following boot.'),
        Key("cache", ValueKind.PATH, _check_directory, DEFAULT_CACHE_DIR,
            "The boom-compatible image cache (<sha1>.img files and cacheindex.json)."),
        Key("runtime", ValueKind.PATH, _check_directory, None,
            "Where the daemon keeps its state file. Default: $RUNTIME_DIRECTORY (systemd's "
            'RuntimeDirectory=), else "/run/bootwatch".'),
    )),
    Section("entries", (
        Key("sources", ValueKind.SOURCES, _check_sources, SOURCES_AUTO,
            '"auto": read every entry source the host has (BLS entries in <boot>/loader/entries and '
            'on the ESP, UKIs in EFI/Linux, GRUB\'s grub.cfg); or a list of the sources to read, '
            'from "bls", "uki" and "grub": each one listed must be there.'),
        Key("esp", ValueKind.DIRECTORY, _check_optional_directory, None,
            "The EFI system partition's mount point. Default: found as bootctl finds it "
            "(/efi, /boot, /boot/efi) when boot is /boot."),
    )),
    Section("cache", (
        Key("track", ValueKind.ENUM, _check_track, "referenced",
            '"referenced": cache the images that a BLS entry names; '
            '"all": cache every file in the boot directory that matches patterns.'),
        Key("patterns", ValueKind.PATTERNS, _check_patterns,
            ("vmlinuz-*", "vmlinux-*", "initramfs-*", "initrd*", "*.efi"),
            'Globs of the files to cache with track = "all".'),
        Key("keep", ValueKind.INT, _check_keep, 2,
            "How many images to keep per path: cleaning removes older ones."),
        Key("auto_restore", ValueKind.BOOL, _check_bool, True,
            "Restore a referenced image that disappears from the boot directory."),
    )),
    Section("watch", (
        Key("settle", ValueKind.DURATION, _bounded_duration("settle"), "250ms",
            "How long a burst of file events must be quiet before bootwatch acts on it."),
        Key("rescan_interval", ValueKind.DURATION, _bounded_duration("rescan_interval"), "15m",
            "How often to reconcile the whole boot directory, a safety net for lost events."),
        Key("package_locks", ValueKind.PATHS, _check_paths, default_paths(LockKind.RECORD),
            "Files a package manager holds an fcntl write lock on while its transaction runs (dpkg, apt, "
            "rpm, dnf 5). Decisions about removed boot files wait while one is held."),
        Key("package_pid_files", ValueKind.PATHS, _check_paths, default_paths(LockKind.PID_FILE),
            "Files that hold the PID of a running package manager (dnf 4, zypper): a transaction is in "
            "progress while that process lives."),
        Key("package_lock_files", ValueKind.PATHS, _check_paths, default_paths(LockKind.LOCK_FILE),
            "Files that exist only while a package manager runs (pacman's db.lck): a transaction is in "
            "progress while one exists."),
        Key("transaction_timeout", ValueKind.DURATION, _bounded_duration("transaction_timeout"), "30m",
            "The longest that decisions about removed boot files wait for one package manager "
            "transaction; then bootwatch decides anyway and logs a warning."),
    )),
    Section("log", (
        Key("level", ValueKind.LEVEL, _check_level, "info",
            'Log level: "debug", "info", "notice", "warning" or "error".'),
    )),
    Section("jobs", (
        Key("clean_interval", ValueKind.DURATION, _bounded_duration("clean_interval"), "1h",
            "How often to clean the cache (as 'bootwatch clean')."),
        Key("gc_interval", ValueKind.DURATION, _bounded_duration("gc_interval"), "1m",
            "How often to remove pin links whose owner is dead (as 'bootwatch gc')."),
        Key("verify_interval", ValueKind.DURATION, _bounded_duration("verify_interval"), "1d",
            "The period over which every cached image is re-hashed once."),
    )),
    Section("prove", (
        Key("on_new_kernel", ValueKind.BOOL, _check_bool, False,
            "Boot each new kernel's entries in a throwaway QEMU VM once its files are cached and no package "
            "manager transaction is in progress, as 'bootwatch prove' does (needs qemu-system-x86_64)."),
        Key("timeout", ValueKind.DURATION, _bounded_duration("timeout"), format_duration(DEFAULT_TIMEOUT),
            "How long one proof's VM may run ('bootwatch prove --timeout')."),
        Key("memory", ValueKind.INT, _check_memory, None,
            "MiB of memory of a proof's VM ('bootwatch prove --memory'). Default: from the initramfs's size, "
            f"at least {MIN_MEMORY_MIB} MiB."),
        Key("accel", ValueKind.ENUM, _check_accel, AccelChoice.AUTO.value,
            '"auto": KVM when /dev/kvm works (and starts the VM), else TCG; or "kvm", or "tcg" '
            "('bootwatch prove --accel')."),
    )),
    Section("metrics", (
        Key("textfile", ValueKind.OPTIONAL_PATH, _check_optional_path, None,
            "node_exporter textfile-collector output, e.g. "
            '"/var/lib/prometheus/node-exporter/bootwatch.prom". Not set: no metrics.'),
    )),
)

EMBEDDED_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    section.name: MappingProxyType({k.name: k.default for k in section.keys
                                    if k.default is not None})
    for section in SCHEMA
})
"""The defaults as TOML values, by section and key. Derived and unset keys are absent."""


def _render_defaults() -> str:
    lines = ["# bootwatch: embedded default configuration"]
    for section in SCHEMA:
        lines.append("")
        lines.append(f"[{section.name}]")
        for key in section.keys:
            lines.append(f"# {key.help}")
            if key.kind is ValueKind.DURATION:
                low, high = DURATION_BOUNDS[key.name]
                lines.append(f"# From {format_duration(low)} to {format_duration(high)}.")
            if key.default is None:
                lines.append(f"# {key.name} =")
            elif key.kind is ValueKind.DURATION:
                lines.append(f"{key.name} = {json.dumps(key.default)}")
            else:
                lines.append(f"{key.name} = {_render(key.kind, key.default)}")
    return "\n".join(lines) + "\n"


EMBEDDED_DEFAULTS_TOML: str = _render_defaults()
"""The defaults as commented TOML text (the shipped etc/bootwatch/bootwatch.toml says the same)."""


# --------------------------------------------------------------------------------------------
# Loading


@dataclasses.dataclass
class _Setting:
    value: Any
    source: Path | None  # None: embedded default


def load_config(path: Path | None = None, *,
                environ: Mapping[str, str] = os.environ) -> Config:
    """Read, merge and validate the configuration; see the module docstring for the order.

    Raises :class:`ConfigError` (exit code 78) for any problem, naming the file and the line.
    """
    if path is not None:
        main, explicit = Path(path), True
    elif environ.get(CONFIG_ENV):
        main, explicit = Path(environ[CONFIG_ENV]), True
    else:
        main, explicit = DEFAULT_CONFIG_PATH, False

    settings: dict[tuple[str, str], _Setting] = {}
    sources: list[Path] = []

    text = _read(main, must_exist=explicit)
    if text is not None:
        _merge(settings, main, text)
        sources.append(main)
    for dropin in _dropins(main):
        text = _read(dropin, must_exist=True)
        if text is not None:
            _merge(settings, dropin, text)
            sources.append(dropin)
    return _build(settings, tuple(sources), environ)


def _dropins(main: Path) -> list[Path]:
    directory = main.with_name(main.name + ".d")
    try:
        names = sorted(entry.name for entry in os.scandir(directory)
                       if entry.name.endswith(".toml") and not entry.is_dir())
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise ConfigError("expected a directory of *.toml drop-ins, found a file",
                          path=directory) from None
    except OSError as err:
        raise ConfigError(f"cannot list the drop-ins: {os.strerror(err.errno or 0).lower()}",
                          path=directory) from None
    return [directory / name for name in names]


def _is_null_device(path: Path) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


# A configuration file or drop-in larger than this is no configuration: the whole schema, every
# key commented, is some 5 KB. The bound keeps a wrong --config (a disk image) from being read
# into memory.
MAX_CONFIG_SIZE = 1 << 20


def _read(path: Path, *, must_exist: bool) -> str | None:
    try:
        data = read_regular(path, follow_symlinks=True, limit=MAX_CONFIG_SIZE)
    except FileNotFoundError:
        if must_exist:
            raise ConfigError("no such file", path=path,
                              hint="the configuration file was named explicitly "
                                   f"(--config or ${CONFIG_ENV}), so it must exist") from None
        return None
    except NotRegularFileError as err:
        if _is_null_device(path):  # "--config /dev/null", or a drop-in masked as systemd masks units
            return ""
        raise ConfigError(f"cannot read: {err.strerror}", path=path) from None
    except FileTooLargeError as err:
        raise ConfigError(f"cannot read: {err.strerror}; no configuration is that large", path=path) from None
    except OSError as err:
        raise ConfigError(f"cannot read: {os.strerror(err.errno or 0).lower()}",
                          path=path) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"expected UTF-8 text, found byte 0x{data[err.start]:02x}",
                          path=f"{path}:{line}") from None


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _merge(settings: dict[tuple[str, str], _Setting], path: Path, text: str) -> None:
    """Validate one file and lay its keys over ``settings``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise _syntax_error(path, text, str(err)) from None

    sections = {s.name: s for s in SCHEMA}
    for name, table in data.items():
        section = sections.get(name)
        if section is None:
            where = _locate(text, name, None)
            if isinstance(table, dict):
                raise _error(path, where, f"[{name}]", "unknown section",
                             "one of " + ", ".join(f"[{s}]" for s in sections),
                             hint=_did_you_mean(name, sections, "[{}]"))
            home = [s.name for s in SCHEMA if s.key(name) is not None]
            raise _error(path, where, name, "key outside any section",
                         "only the sections " + ", ".join(f"[{s}]" for s in sections),
                         hint=f"put it under [{home[0]}]" if home else None)
        if not isinstance(table, dict):
            raise _error(path, _locate(text, name, None), f"[{name}]",
                         f"found {_describe(table)}", "a table")
        for key_name, value in table.items():
            key = section.key(key_name)
            where = _locate(text, name, key_name)
            if key is None:
                raise _error(path, where, f"[{name}] {key_name}", "unknown key",
                             "one of " + ", ".join(k.name for k in section.keys),
                             hint=_did_you_mean(key_name, [k.name for k in section.keys], "{}"))
            try:
                typed = key.check(value)
            except _Invalid as invalid:
                raise _error(path, where, f"[{name}] {key_name}", f"found {_describe(value)}",
                             invalid.expected) from None
            settings[(name, key_name)] = _Setting(typed, path)


def _build(settings: Mapping[tuple[str, str], _Setting], sources: tuple[Path, ...],
           environ: Mapping[str, str]) -> Config:
    def get(section: str, name: str, kind: type[T]) -> T:
        """The checked value of ``[section] name`` (its default when no file set it): a ``kind``,
        as the key's check returns."""
        if (section, name) in settings:
            value = settings[(section, name)].value
        else:
            key = next(s for s in SCHEMA if s.name == section).key(name)
            assert key is not None and key.default is not None
            value = key.check(key.default)
        if not isinstance(value, kind):
            raise TypeError(f"[{section}] {name}: its check gave a {type(value).__name__}, not a {kind.__name__}")
        return value

    boot, cache = get("paths", "boot", Path), get("paths", "cache", Path)
    problem = layout_problem(boot, cache)
    if problem is not None:
        # Named by the file that set the cache directory (else the boot directory).
        setting = settings.get(("paths", "cache")) or settings.get(("paths", "boot"))
        raise ConfigError(f"[paths]: {problem}", path=setting.source if setting and setting.source else None)
    entries_explicit = ("paths", "entries") in settings
    entries = get("paths", "entries", Path) if entries_explicit else boot / "loader" / "entries"
    runtime = get("paths", "runtime", Path) if ("paths", "runtime") in settings \
        else _runtime_from_environment(environ)
    entry_sources: tuple[EntrySource, ...] | str = settings[("entries", "sources")].value \
        if ("entries", "sources") in settings else SOURCES_AUTO
    # Set to "" in a file: not set, None.
    textfile: Path | None = settings[("metrics", "textfile")].value if ("metrics", "textfile") in settings else None
    memory: int | None = settings[("prove", "memory")].value if ("prove", "memory") in settings else None

    return Config(
        paths=PathsConfig(boot=boot, entries=entries, cache=cache,
                          runtime=runtime, entries_explicit=entries_explicit),
        cache=CacheConfig(track=get("cache", "track", Track), patterns=get("cache", "patterns", tuple),
                          keep=get("cache", "keep", int), auto_restore=get("cache", "auto_restore", bool)),
        watch=WatchConfig(settle=get("watch", "settle", float),
                          rescan_interval=get("watch", "rescan_interval", float),
                          package_locks=get("watch", "package_locks", tuple),
                          package_pid_files=get("watch", "package_pid_files", tuple),
                          package_lock_files=get("watch", "package_lock_files", tuple),
                          transaction_timeout=get("watch", "transaction_timeout", float)),
        log=LogConfig(level=get("log", "level", str)),
        jobs=JobsConfig(clean_interval=get("jobs", "clean_interval", float),
                        gc_interval=get("jobs", "gc_interval", float),
                        verify_interval=get("jobs", "verify_interval", float)),
        metrics=MetricsConfig(textfile=textfile),
        entries=EntriesConfig(sources=None if isinstance(entry_sources, str) else entry_sources,
                              esp=settings[("entries", "esp")].value if ("entries", "esp") in settings else None),
        prove=ProveConfig(on_new_kernel=get("prove", "on_new_kernel", bool), timeout=get("prove", "timeout", float),
                          memory=memory, accel=get("prove", "accel", AccelChoice)),
        sources=sources,
    )


def _runtime_from_environment(environ: Mapping[str, str]) -> Path:
    # systemd sets RUNTIME_DIRECTORY to a colon-separated list, one per RuntimeDirectory= entry.
    value = environ.get(RUNTIME_ENV, "").split(":")[0]
    if not value:
        return DEFAULT_RUNTIME
    if not value.startswith("/"):
        raise ConfigError(f"${RUNTIME_ENV}: expected an absolute path, found {json.dumps(value)}")
    return Path(os.path.normpath(value))


# --------------------------------------------------------------------------------------------
# Error messages


def _error(path: Path, line: int | None, what: str, found: str, expected: str, *,
           hint: str | None = None) -> ConfigError:
    location = f"{path}:{line}" if line else str(path)
    if found.startswith("found "):
        return ConfigError(f"{what}: expected {expected}, {found}", path=location, hint=hint)
    return ConfigError(f"{what}: {found}, expected {expected}", path=location, hint=hint)


def _did_you_mean(name: str, candidates: Any, template: str) -> str | None:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"did you mean {template.format(close[0])}?" if close else None


def _syntax_error(path: Path, text: str, message: str) -> ConfigError:
    """tomllib says ``Invalid value (at line 7, column 10)``; name the section and key too."""
    match = _TOML_POSITION.search(message)
    if not match:
        return ConfigError(f"expected valid TOML, found a syntax error: {message}", path=path)
    line, column = int(match.group(1)), int(match.group(2))
    reason = message[:match.start()]
    lines = text.splitlines()
    source = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    section = _section_at(lines, line)
    key = re.match(r"\s*([A-Za-z0-9_-]+)\s*=", lines[line - 1]) if 0 < line <= len(lines) \
        else None
    what = " ".join(p for p in (f"[{section}]" if section else "",
                                key.group(1) if key else "") if p)
    found = f"found {reason[:1].lower() + reason[1:]} at column {column}"
    if source:
        found += f" in: {source}"
    prefix = f"{what}: " if what else ""
    return ConfigError(f"{prefix}expected valid TOML, {found}", path=f"{path}:{line}")


_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")


def _unquote(name: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in name.split("."))


def _section_at(lines: list[str], line: int) -> str | None:
    """The ``[table]`` that line ``line`` (1-based) belongs to, by the last header above it."""
    for text in reversed(lines[:line - 1]):
        match = _HEADER.match(text)
        if match:
            return _unquote(match.group(1))
    return None


def _locate(text: str, section: str, key: str | None) -> int | None:
    """The 1-based line where ``[section] key`` (or the section itself) is set, if found.

    A scan of the text, not a parse: it understands ``[section]`` headers, ``key = ...`` inside
    them, and ``section.key = ...`` / ``section = {...}`` at the top level, with or without quotes.
    That covers everything a person writes; for the rest the message has no line number.
    """
    def quoted(name: str) -> str:
        return r"""(?:%s|"%s"|'%s')""" % ((re.escape(name),) * 3)

    key_re = re.compile(rf"^\s*{quoted(key)}\s*=") if key else None
    dotted = re.compile(rf"^\s*{quoted(section)}\s*\.\s*{quoted(key)}\s*[=.]") if key \
        else re.compile(rf"^\s*{quoted(section)}\s*[.=]")
    inline = re.compile(rf"^\s*{quoted(section)}\s*=\s*\{{.*\b{quoted(key)}\s*=") if key \
        else None
    current: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            current = _unquote(header.group(1))
            if key is None and (current == section or current.startswith(section + ".")):
                return number
            if key is not None and (current == f"{section}.{key}" or
                                    current.startswith(f"{section}.{key}.")):
                return number  # [section.key] makes the key a table
            continue
        if current is None:
            if dotted.match(line) or (inline is not None and inline.match(line)):
                return number
        elif current == section and key_re is not None and key_re.match(line):
            return number
    return None
