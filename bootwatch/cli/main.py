"""The ``bootwatch`` command line.

Every subcommand takes ``--config FILE``, ``--boot-dir DIR`` and ``--cache-dir DIR``, before or
after its name. Errors are one line on stderr (plus a hint), never a traceback; exit codes are 0
(ok), 1 (an operation failed, or verify/fsck found a problem), 2 (usage) and 78 (configuration).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Callable, TextIO

from bootwatch import __version__
from bootwatch.cache.fsck import check_cache
from bootwatch.cache.operations import AddOutcome, BootCache, PathState, PathStatus, Verification
from bootwatch.cache.policy import keep_unreferenced_predicate
from bootwatch.cache.session import open_cache, open_existing_cache, reconcile_once
from bootwatch.config import Config, load_config
from bootwatch.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    BootwatchError,
    CacheMissingError,
    UsageError,
    describe_oserror,
    printable,
)
from bootwatch.log import Event, log_event, setup_cli_logging
from bootwatch.safety import boot_path_from_argument

log = logging.getLogger("bootwatch.cli.main")

Command = Callable[[argparse.Namespace, Config], int]


# ------------------------------------------------------------------------------------ output

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
    outcome = "ok" if verified.ok else "FAILED"
    return f"{outcome} {format_time(verified.time)}"


# ------------------------------------------------------------------------------------ helpers

def boot_paths(cache: BootCache, arguments: Sequence[str]) -> list[str]:
    return [boot_path_from_argument(cache.boot_dir, a) for a in arguments]


# ------------------------------------------------------------------------------------ commands

def log_changes(command: str) -> None:
    """A command that changes the boot directory or the cache logs what it did to the journal
    too, wherever there is one (see :func:`bootwatch.log.setup_cli_logging`); stderr shows
    warnings and errors, as before."""
    setup_cli_logging("warning", command, plain=True)


def cmd_add(args: argparse.Namespace, config: Config) -> int:
    log_changes("add")
    cache = BootCache.from_config(config)
    for result in cache.add(boot_paths(cache, args.paths)):
        if result.outcome is AddOutcome.CHANGED:
            print(f"{result.path}: changed, new image {result.image_id} (was {result.previous_id})")
            log_event(log, Event.IMAGE_CHANGED, "%s: content changed, new image %s (was %s)", result.path,
                      result.image_id, result.previous_id, path=result.path, image_id=result.image_id,
                      state=PathState.CACHED, previous_image_id=result.previous_id)
        else:
            print(f"{result.path}: {result.outcome} as {result.image_id}")
            if result.outcome is AddOutcome.CACHED:
                log_event(log, Event.IMAGE_CACHED, "%s: cached as image %s", result.path, result.image_id,
                          path=result.path, image_id=result.image_id, state=PathState.CACHED)
    return EXIT_OK


def cmd_remove(args: argparse.Namespace, config: Config) -> int:
    log_changes("remove")
    cache = BootCache.from_config(config)
    paths = boot_paths(cache, args.paths)
    cache.remove(paths, force=args.force)
    for path in paths:
        print(f"{path}: removed from the cache")
        log.info("%s: removed from the cache by 'bootwatch remove'", path)
    return EXIT_OK


def cmd_restore(args: argparse.Namespace, config: Config) -> int:
    log_changes("restore")
    cache = BootCache.from_config(config)
    paths = boot_paths(cache, args.paths)
    for path, image_id in zip(paths, cache.restore(paths)):
        print(f"{path}: restored image {image_id}")
        log_event(log, Event.IMAGE_RESTORED, "%s: restored image %s by 'bootwatch restore'", path, image_id,
                  path=path, image_id=image_id, state=PathState.RESTORED)
    return EXIT_OK


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    statuses = open_existing_cache(config).list()
    if args.json:
        print_json([s.to_json() for s in statuses])
        return EXIT_OK
    rows = [(s.path, s.image_id[:12], s.state + ("*" if s.boot_changed else ""), s.count, len(s.images),
             verification_summary(s.verified), s.image_problem or "") for s in statuses]
    print(format_table(("PATH", "IMAGE", "STATE", "COUNT", "IMAGES", "VERIFIED", "PROBLEM"), rows))
    if any(s.boot_changed for s in statuses):
        print("* the boot file changed since it was cached; 'bootwatch add' or the daemon caches it")
    return EXIT_OK


def cmd_show(args: argparse.Namespace, config: Config) -> int:
    cache = open_existing_cache(config)
    [status] = cache.list(boot_paths(cache, [args.path]))
    if args.json:
        print_json(status.to_json())
        return EXIT_OK
    print(render_status(cache, status))
    return EXIT_OK


def render_status(cache: BootCache, s: PathStatus) -> str:
    index = cache.load_index()
    lines = [
        f"Path:       {s.path}",
        f"Boot file:  {cache.boot_dir / s.path.lstrip('/')}",
        f"State:      {s.state}" + (" (the boot file changed since it was cached)" if s.boot_changed else ""),
        f"Entries:    {s.count}",
        f"Mode:       {stat.filemode(s.mode)} ({stat.S_IMODE(s.mode):04o}) uid {s.uid} gid {s.gid}",
        f"Verified:   {verification_summary(s.verified)}"
        + (f" ({s.verified.message})" if s.verified is not None and not s.verified.ok else ""),
    ]
    if s.image_problem:
        lines.append(f"Problem:    {s.image_problem}")
    lines.append("Images (newest first):")
    for image_id in s.images:
        image_st = cache.store.image_stat(image_id)
        size = image_st.st_size if image_st is not None else "missing,"
        lines.append(f"  {image_id}  {format_time(index.image_ts(image_id))}  {size} bytes")
    return "\n".join(lines)


def cmd_verify(args: argparse.Namespace, config: Config) -> int:
    cache = open_existing_cache(config)
    results = cache.verify(boot_paths(cache, args.paths) if args.paths else None)
    if args.json:
        print_json([r.to_json() for r in results])
    else:
        for r in results:
            print(f"{'ok    ' if r.ok else 'FAILED'} {r.image_id}  {', '.join(r.paths)}"
                  + ("" if r.ok else f": {r.message}"))
            for check in r.checks:
                if not check.ok:
                    print(f"       {check.kind}: {check.outcome}: {check.message}")
        if not results:
            print("nothing to verify: the cache is empty")
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILURE


def cmd_clean(args: argparse.Namespace, config: Config) -> int:
    if not args.dry_run:
        log_changes("clean")
    cache = BootCache.from_config(config)
    report = cache.clean(dry_run=args.dry_run, force=args.force,
                         keep_unreferenced=keep_unreferenced_predicate(config, cache))
    if not args.dry_run and (report.uncached_paths or report.deleted_images or report.removed_restored_copies):
        log.info("clean: uncached %s; deleted %d image(s); removed the restored copies %s",
                 ", ".join(report.uncached_paths) or "nothing", len(report.deleted_images),
                 ", ".join(report.removed_restored_copies) or "none")
    if args.json:
        print_json(report.to_json())
        return EXIT_OK
    verb = "would " if args.dry_run else ""
    for path in report.uncached_paths:
        print(f"{verb}uncache {path}: no boot entry references it")
    for image_id in report.deleted_images:
        print(f"{verb}delete image {image_id}")
    for item in report.kept_pinned:
        print(f"kept {item}: pinned by a running program")
    for path in report.removed_restored_copies:
        print(f"removed the restored copy {path}")
    for name in report.removed_temp_files:
        print(f"{verb}remove stale temp file {name}")
    if not any(value for key, value in report.to_json().items() if key != "kept_pinned"):
        print("nothing to clean")
    return EXIT_OK


def cmd_fsck(args: argparse.Namespace, config: Config) -> int:
    report = check_cache(BootCache.from_config(config), repair=args.repair)
    if args.json:
        print_json(report.to_json())
    else:
        for line in report.problems:
            print(f"problem: {line}")
        for line in report.warnings:
            print(f"warning: {line}")
        for line in report.repaired:
            print(f"repaired: {line}")
        if report.ok and not report.warnings:
            print("the cache is consistent")
    if args.repair:
        # Problems that were repaired are reported, but the exit code says whether the cache is sound now.
        after = check_cache(BootCache.from_config(config), repair=False)
        return EXIT_OK if after.ok else EXIT_FAILURE
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_pin(args: argparse.Namespace, config: Config) -> int:
    from bootwatch.cache.pins import command_pin  # imported on use: only pin and gc need it
    return command_pin(args, config)


def cmd_gc(args: argparse.Namespace, config: Config) -> int:
    from bootwatch.cache.pins import command_gc
    return command_gc(args, config)


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from bootwatch.daemon.service import run_daemon  # the daemon's imports (watchdog, apscheduler) only when needed
    return run_daemon(getattr(args, "config", None), getattr(args, "boot_dir", None), getattr(args, "cache_dir", None))


def cmd_scan(args: argparse.Namespace, config: Config) -> int:
    setup_cli_logging("warning" if args.quiet else config.log.level, "scan")
    report = reconcile_once(config, open_cache(config))
    if report.references_unknown:
        print(f"bootwatch: warning: references unknown, nothing was taken away: {report.references_unknown}",
              file=sys.stderr)
    if args.json:
        print_json(report.to_json())
    elif not args.quiet:
        print(f"examined {report.examined} paths, hashed {report.hashed}: {len(report.cached)} cached, "
              f"{len(report.changed)} changed, {len(report.restored)} restored, {len(report.missing)} missing, "
              f"{len(report.errors)} errors"
              + (f", {len(report.removed_temp_files)} temp files of an interrupted run removed"
                 if report.removed_temp_files else ""))
    return EXIT_OK if not report.errors else EXIT_FAILURE


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    # config was read from FILE alone when one was given (see load_effective_config).
    sys.stdout.write(config.to_toml())
    return EXIT_OK


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    from bootwatch.daemon.status import daemon_pids, load_status
    pids = daemon_pids(config.paths.cache)
    running = bool(pids)
    status, unavailable = None, None
    if running:
        # Details only from the daemon that holds the lock: a stale file's PID may be anyone now.
        try:
            status = load_status(config.paths.runtime)
        except BootwatchError as e:
            unavailable = str(e)
        else:
            if status.pid not in pids:
                status, unavailable = None, (f"{config.paths.runtime}/status.json: names PID {status.pid}, "
                                             "not the daemon that holds the lock")
    pid = pids[0] if pids and pids[0] > 0 else None
    if args.json:
        details = asdict(status) if status is not None else {"pid": pid}
        print_json({"running": running, **details, **({"details_unavailable": unavailable} if unavailable else {})})
    elif not running:
        print(f"bootwatch is not running (no process holds the daemon lock on {config.paths.cache})")
    elif status is None:
        print(f"bootwatch is running (pid {pid or 'unknown'}), no details: {unavailable}")
    else:
        print(f"bootwatch is running (pid {status.pid}) since {format_time(status.started)}")
        print(f"  watching:       {status.boot_dir} -> {status.cache_dir}")
        print(f"  last reconcile: {format_time(status.last_reconcile)}")
        print(f"  last batch:     {format_time(status.last_batch)}")
        print("  paths:          " + (", ".join(f"{n} {s}" for s, n in sorted(status.counts.items())) or "none cached"))
        if status.lock_wait:
            print(f"  waiting:        {status.lock_wait}")
        if status.references_unknown:
            print(f"  references:     UNKNOWN, nothing is cleaned or deleted: {status.references_unknown}")
        if status.problems:
            print(f"  problems:       {status.problems} cached images with problems (see 'bootwatch list')")
    # As systemctl status: 3 means "not running".
    return EXIT_OK if running else 3


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from bootwatch.cli.demo import run_demo
    return run_demo(keep=args.keep)


# ------------------------------------------------------------------------------------ parser

def add_common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("common options")
    group.add_argument("--config", type=Path, metavar="FILE", default=default,
                       help="configuration file (default: $BOOTWATCH_CONFIG or /etc/bootwatch/bootwatch.toml)")
    group.add_argument("--boot-dir", type=Path, metavar="DIR", default=default,
                       help="boot directory (overrides [paths] boot)")
    group.add_argument("--cache-dir", type=Path, metavar="DIR", default=default,
                       help="cache directory (overrides [paths] cache)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bootwatch", description="Keep every boot entry of this host bootable.")
    parser.add_argument("--version", action="version", version=f"bootwatch {__version__}")
    add_common_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        add_common_options(p, suppress=True)
        p.set_defaults(func=func)
        return p

    p = command("add", cmd_add, "cache boot files (a new image id when the content changed)")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="boom-style path (/vmlinuz-6.1.0) or a path in the boot directory")
    p = command("remove", cmd_remove, "uncache paths")
    p.add_argument("--force", action="store_true", help="remove even while boot entries reference the path")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = command("restore", cmd_restore, "copy a MISSING image back into the boot directory")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = command("list", cmd_list, "list cached paths with their state")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = command("show", cmd_show, "show one cached path in detail")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p = command("verify", cmd_verify, "re-hash and check cached images; exit 1 if any failed")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = command("clean", cmd_clean, "uncache unreferenced paths, trim old images, delete orphans and temp files")
    p.add_argument("--dry-run", action="store_true", help="only say what would be done")
    p.add_argument("--force", action="store_true",
                   help="clean although every boot entry vanished at once or the boot directory is no longer "
                        "a mount point (confirms that this is how it should be)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p = command("fsck", cmd_fsck, "check that the index and the image files agree")
    p.add_argument("--repair", action="store_true", help="repair what can be repaired; a corrupt index is kept aside")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    command("run", cmd_run, "run the daemon: watch the boot directory and keep the cache current")
    p = command("scan", cmd_scan, "reconcile once, as the daemon does at start, and exit")
    p.add_argument("--quiet", action="store_true", help="print nothing but warnings and errors")
    p.add_argument("--json", action="store_true", help="print what was done as a JSON object")
    p = command("check-config", cmd_check_config, "validate the configuration and print the effective one")
    p.add_argument("file", nargs="?", type=Path, metavar="FILE", help="the file to check (default: as --config)")
    p = command("status", cmd_status, "show whether the daemon runs, since when, and the counts by state")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p = command("demo", cmd_demo, "show what bootwatch does on a throw-away boot tree (never touches /boot)")
    p.add_argument("--keep", action="store_true", help="keep the temp tree afterwards")
    p = command("pin", cmd_pin, "run COMMAND with cached images pinned (hard links that clean leaves alone)")
    p.add_argument("--path", dest="pin_paths", action="append", default=[], metavar="P",
                   help="pin the newest image of this cached path (repeatable)")
    p.add_argument("--image", dest="pin_images", action="append", default=[], metavar="ID",
                   help="pin this image id (repeatable)")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS]",
                   help="the command to run; it gets the pinned files in BOOTWATCH_PIN_0, BOOTWATCH_PIN_1, ...")
    p = command("gc", cmd_gc, "remove pin links whose owner process is dead")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    return parser


def load_effective_config(args: argparse.Namespace) -> Config:
    # check-config FILE reads FILE (and its drop-ins) and nothing else: not the default file,
    # which may be the broken one the user is about to replace.
    config_file = getattr(args, "file", None) or getattr(args, "config", None)
    config = load_config(config_file)
    boot_dir = getattr(args, "boot_dir", None)
    if boot_dir is not None and not os.path.isdir(boot_dir):
        # A boot directory named on the command line that is not there is a typo, not an empty
        # /boot: listing "nothing cached" for it would be a lie.
        raise UsageError("--boot-dir: no such directory", path=boot_dir)
    return config.with_overrides(boot=boot_dir, cache=getattr(args, "cache_dir", None))


class PrintableStream:
    """A text stream that writes everything through :func:`errors.printable` (lines kept).

    Every line the command line prints, tables, messages, errors and log lines alike, may hold a
    name from the boot directory, an entry or the index: none of them reaches the terminal raw.
    JSON needs nothing: json.dumps escapes control characters itself.
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
    sys.stdout, sys.stderr = PrintableStream(sys.stdout), PrintableStream(sys.stderr)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def report_error(error: BootwatchError) -> None:
    print(f"bootwatch: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"bootwatch: hint: {error.hint}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    with printable_output():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_effective_config(args)
        return args.func(args, config)
    except CacheMissingError as e:
        if getattr(args, "cache_dir", None) is not None:
            # As for --boot-dir: a directory named on the command line that is not there is a
            # typo (a command that writes creates it; one that only reads gets here).
            e = UsageError("--cache-dir: no such directory", path=args.cache_dir, hint=e.hint)
        report_error(e)
        return e.exit_code
    except BootwatchError as e:
        report_error(e)
        return e.exit_code
    except BrokenPipeError:  # "bootwatch list | head": the reader has all it wants
        return EXIT_FAILURE
    except OSError as e:
        report_error(BootwatchError(describe_oserror(e)))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: one line for the user, the traceback on request
        if os.environ.get("BOOTWATCH_DEBUG"):
            raise
        print(f"bootwatch: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print("bootwatch: hint: run with BOOTWATCH_DEBUG=1 for the traceback, and report it", file=sys.stderr)
        return EXIT_FAILURE
