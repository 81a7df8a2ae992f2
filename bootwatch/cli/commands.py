"""The commands of the command line, one function each: ``cmd_NAME(args, config) -> exit code``.

The parser that maps names to these functions is :mod:`bootwatch.cli.parser`. What only some
commands need is imported when they run: the daemon's modules (``run``, ``status``), fsck, and
``pin``/``gc`` (:mod:`bootwatch.cli.pin`, with the pins library). ``scan`` is what the
package hooks run at every kernel install, and ``list`` what a user types: they start
without any of it.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from bootwatch import scanproof
from bootwatch.cache.operations import AddOutcome, BootCache, CleanReport, PathState, PathStatus
from bootwatch.cache.policy import keep_unreferenced_predicate
from bootwatch.cache.reconcile import Reconciler, ReconcileReport
from bootwatch.cache.session import open_cache, open_existing_cache, reconcile_once, record_scan_proof
from bootwatch.cli.output import (
    Progress,
    check_text,
    format_table,
    format_time,
    print_json,
    verification_summary,
)
from bootwatch.config import DEFAULT_CONFIG_PATH, Config
from bootwatch.defaults import CONFIG_ENV
from bootwatch.entries.summary import NO_ENTRIES_HINT, Census
from bootwatch.errors import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_OK, BootwatchError, UsageError, printable
from bootwatch.log import Event, counted, log_event, setup_cli_logging, short_id
from bootwatch.safety import boot_path_from_argument

if TYPE_CHECKING:
    from bootwatch.daemon.status import DaemonStatus

# The journal's LOGGER for what the command line did, whichever module of it logs.
log = logging.getLogger("bootwatch.cli")


def boot_paths(cache: BootCache, arguments: Sequence[str]) -> list[str]:
    return [boot_path_from_argument(cache.boot_dir, a, esp=cache.esp()) for a in arguments]


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
            print(f"{printable(result.path)}: changed, new image {result.image_id} (was {result.previous_id})")
            log_event(log, Event.IMAGE_CHANGED, "%s: content changed, new image %s (was %s)", result.path,
                      short_id(result.image_id), short_id(result.previous_id), path=result.path,
                      image_id=result.image_id, state=PathState.CACHED, previous_image_id=result.previous_id)
        else:
            print(f"{printable(result.path)}: {result.outcome} as {result.image_id}")
            if result.outcome is AddOutcome.CACHED:
                log_event(log, Event.IMAGE_CACHED, "%s: cached as image %s", result.path, short_id(result.image_id),
                          path=result.path, image_id=result.image_id, state=PathState.CACHED)
    return EXIT_OK


def cmd_remove(args: argparse.Namespace, config: Config) -> int:
    log_changes("remove")
    cache = BootCache.from_config(config)
    paths = boot_paths(cache, args.paths)
    cache.remove(paths, force=args.force)
    for path in paths:
        print(f"{printable(path)}: removed from the cache")
        log.info("%s: removed from the cache by 'bootwatch remove'", path)
    return EXIT_OK


def cmd_restore(args: argparse.Namespace, config: Config) -> int:
    if args.image is not None and len(args.paths) != 1:
        raise UsageError("restore --image: give exactly one PATH", hint="bootwatch restore --image ID PATH")
    log_changes("restore")
    cache = BootCache.from_config(config)
    paths = boot_paths(cache, args.paths)
    restored = (cache.restore(paths, force=args.force) if args.image is None
                else [cache.restore_image(paths[0], args.image, force=args.force)])
    for path, image_id in zip(paths, restored):
        print(f"{printable(path)}: restored image {image_id}")
        log_event(log, Event.IMAGE_RESTORED, "%s: restored image %s by 'bootwatch restore%s'", path, short_id(image_id),
                  "" if args.image is None else " --image", path=path, image_id=image_id, state=PathState.RESTORED)
    return EXIT_OK


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    statuses = open_existing_cache(config).list()
    if args.json:
        print_json([s.to_json() for s in statuses])
        return EXIT_OK
    rows = [(s.path, short_id(s.image_id), s.state + ("*" if s.boot_changed else ""), s.count, len(s.images),
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
        f"Path:       {printable(s.path)}",
        f"Boot file:  {printable(str(cache.boot_dir / s.path.lstrip('/')))}",
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

    def on_image(n: int, total: int, image_id: str, paths: list[str]) -> None:
        progress.show(f"verifying {n}/{total}: {short_id(image_id)} {', '.join(paths)}")

    with Progress() as progress:
        results = cache.verify(boot_paths(cache, args.paths) if args.paths else None, on_image=on_image)
    if args.json:
        print_json([r.to_json() for r in results])
    else:
        for r in results:
            print(f"{'ok    ' if r.ok else 'FAILED'} {short_id(r.image_id)}  {', '.join(map(printable, r.paths))}"
                  + ("" if r.ok else f": {r.message}"))
            for check in r.checks:
                # A failed check is the result's message, said above.
                if not check.ok and check.message != r.message:
                    print(f"       {check_text(check)}")
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
        log.info("clean: uncached %s; deleted %s; removed the restored copies %s",
                 ", ".join(report.uncached_paths) or "nothing", counted(len(report.deleted_images), "image"),
                 ", ".join(report.removed_restored_copies) or "none")
    if args.json:
        print_json(report.to_json())
    else:
        print_clean_report(report, dry_run=args.dry_run)
    return EXIT_OK


def print_clean_report(report: CleanReport, *, dry_run: bool) -> None:
    """What clean did, in the past tense, or with --dry-run what it would do."""
    def say(would: str, did: str, what: str) -> None:
        print(f"{'would ' + would if dry_run else did} {what}")

    for path in report.uncached_paths:
        say("uncache", "uncached", f"{printable(path)}: no boot entry references it")
    for image_id in report.deleted_images:
        say("delete", "deleted", f"image {short_id(image_id)}")
    for item in report.kept_pinned:  # a cached path, or an image id
        what = printable(item) if item.startswith("/") else f"image {short_id(item)}"
        print(f"{'would keep' if dry_run else 'kept'} {what}: pinned by a running program")
    for path in report.removed_restored_copies:
        say("remove", "removed", f"the restored copy {printable(path)}")
    for name in report.removed_temp_files:
        say("remove", "removed", f"the stale temp file {printable(name)}")
    if not any(value for key, value in report.to_json().items() if key != "kept_pinned"):
        print("nothing to clean")


def cmd_fsck(args: argparse.Namespace, config: Config) -> int:
    from bootwatch.cache.fsck import check_cache
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
    from bootwatch.cli.pin import command_pin
    return command_pin(args, config)


def cmd_gc(args: argparse.Namespace, config: Config) -> int:
    from bootwatch.cli.pin import command_gc
    return command_gc(args, config)


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from bootwatch.daemon.service import run_daemon  # the daemon's imports (watchdog, apscheduler) only when needed
    return run_daemon(getattr(args, "config", None), getattr(args, "boot_dir", None), getattr(args, "cache_dir", None))


def cmd_scan(args: argparse.Namespace, config: Config) -> int:
    setup_cli_logging("warning" if args.quiet else config.log.level, "scan")
    if args.no_restore:
        config = config.without_restores()
    logged = _LoggedAnything()
    logging.getLogger("bootwatch").addHandler(logged)
    try:
        cache = open_cache(config)
        reconciler = Reconciler(config, cache)
        report = reconcile_once(config, cache, reconciler)
    finally:
        logging.getLogger("bootwatch").removeHandler(logged)
    # The proof stands for 'scan --quiet' (bootwatch.scanproof reads no other option): recorded
    # only by a pass that may restore.
    if args.quiet and not args.json and not args.no_restore and not logged.anything and _nothing_to_say(report):
        _record_scan_proof(args, config, cache, reconciler)
    if report.references_unknown:
        print(f"bootwatch: warning: references unknown, nothing was taken away: {report.references_unknown}",
              file=sys.stderr)
    if args.json:
        print_json(report.to_json())
    elif not args.quiet:
        # What the pass was for: the boot entries found, or, with none, where they were looked for.
        inputs = reconciler.last_inputs  # the entries a complete pass read
        census = Census.of(inputs.inventory if inputs is not None and inputs.inventory is not None
                           else cache.read_inventory())
        if census.warning is not None:
            print(f"bootwatch: warning: {census.warning}\nbootwatch: hint: {NO_ENTRIES_HINT}", file=sys.stderr)
        print(f"{census.text()}; examined {counted(report.examined, 'path')}, hashed {report.hashed}: "
              f"{len(report.cached)} cached, "
              f"{len(report.changed)} changed, {len(report.restored)} restored, {len(report.missing)} missing, "
              f"{counted(len(report.errors), 'error')}"
              + (f", {counted(len(report.written_broken), 'new image')} broken" if report.written_broken else "")
              + (f", {counted(len(report.removed_temp_files), 'temp file')} of an interrupted run removed"
                 if report.removed_temp_files else ""))
    return EXIT_OK if not report.errors else EXIT_FAILURE


class _LoggedAnything(logging.Handler):
    """Notes whether any record of INFO or above was emitted (to stderr or the journal)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.anything = False

    def emit(self, record: logging.LogRecord) -> None:
        self.anything = True


def _nothing_to_say(report: ReconcileReport) -> bool:
    """Whether ``scan --quiet`` of this report prints and changes nothing, so that the fast path
    (bootwatch.scanproof) may stand for it."""
    return (not report.references_unknown and not report.errors and not report.missing and not report.hashed
            and not any((report.cached, report.changed, report.restored, report.recopied, report.broken,
                         report.unrestored, report.retry, report.removed_temp_files)))


def _main_config(args: argparse.Namespace) -> Path:
    """The main configuration file load_config reads for ``args``."""
    config: Path | None = args.config
    return config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else DEFAULT_CONFIG_PATH)


def scan_start(args: argparse.Namespace) -> scanproof.Start:
    """Taken when this process begins to read its inputs: what scan's proof is recorded against."""
    return scanproof.Start(time.time_ns(), str(_main_config(args)))


def _record_scan_proof(args: argparse.Namespace, config: Config, cache: BootCache, reconciler: Reconciler) -> None:
    started: scanproof.Start | None = getattr(args, "started", None)
    if started is None:
        return
    key = scanproof.proof_key(args.config and str(args.config), args.boot_dir and str(args.boot_dir),
                              args.cache_dir and str(args.cache_dir), os.environ)
    record_scan_proof(config, cache, reconciler, key=key, main_config=_main_config(args), started=started)


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    # config was read from FILE alone when one was given (see load_effective_config).
    sys.stdout.write(config.to_toml())
    return EXIT_OK


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    from bootwatch.daemon.status import daemon_pids
    pids = daemon_pids(config.paths.cache)
    running = bool(pids)
    status, unavailable = running_daemon_status(config, pids) if running else (None, None)
    pid = pids[0] if pids and pids[0] > 0 else None
    if args.json:
        details = asdict(status) if status is not None else {"pid": pid}
        print_json({"running": running, **details, **({"details_unavailable": unavailable} if unavailable else {})})
    elif not running:
        print(f"bootwatch is not running (no process holds the daemon lock on {config.paths.cache})")
    elif status is None:
        print(f"bootwatch is running (pid {pid or 'unknown'}), no details: {unavailable}")
    else:
        print_daemon_status(status)
    return EXIT_OK if running else EXIT_NOT_RUNNING


def running_daemon_status(config: Config, pids: Sequence[int]) -> tuple[DaemonStatus | None, str | None]:
    """The status file of the daemon that holds the lock, or why there are no details.

    Details come only from that daemon: a stale file's PID may be anyone now.
    """
    from bootwatch.daemon.status import load_status
    try:
        status = load_status(config.paths.runtime)
    except BootwatchError as e:
        return None, str(e)
    if status.pid not in pids:
        return None, f"{config.paths.runtime}/status.json: names PID {status.pid}, not the daemon that holds the lock"
    return status, None


def print_daemon_status(status: DaemonStatus) -> None:
    print(f"bootwatch is running (pid {status.pid}) since {format_time(status.started)}")
    print(f"  watching:       {status.boot_dir} -> {status.cache_dir}")
    if status.entries_text is not None:
        print(f"  boot entries:   {status.entries_text}")
    if status.entries_warning:
        print(f"  WARNING:        {status.entries_warning}")
        print(f"                  hint: {NO_ENTRIES_HINT}")
    if status.entries_by_state is not None:
        print(f"  entry health:   {status.states_text() or 'no boot entries'}")
        # The entries to act on by name; the UNKNOWN ones (a root that cannot be told, on every
        # snapshot entry of some hosts) are counted, and 'bootwatch entries' says why.
        from bootwatch.health.model import EntryState
        named = (EntryState.BROKEN, EntryState.AT_RISK)
        states = [(EntryState(state), name) for name, state in (status.entry_states or {}).items()]
        for state, name in sorted(states, key=lambda s: (-s[0].rank, s[1])):
            if state in named:
                print(f"                  {state} {name} (see 'bootwatch entries')")
    print(f"  last reconcile: {format_time(status.last_reconcile)}")
    print(f"  last batch:     {format_time(status.last_batch)}")
    print("  paths:          " + (", ".join(f"{n} {s}" for s, n in sorted(status.counts.items())) or "none cached"))
    if status.lock_wait:
        print(f"  waiting:        {status.lock_wait}")
    if status.transaction_wait:
        print(f"  waiting:        {status.transaction_wait}")
    if status.references_unknown:
        print(f"  references:     UNKNOWN, nothing is cleaned or deleted: {status.references_unknown}")
    if status.problems:
        print(f"  problems:       {counted(status.problems, 'cached image')} with problems (see 'bootwatch list')")
    if status.written_broken:
        print(f"  BROKEN:         {status.written_broken}")


def cmd_entries(args: argparse.Namespace, config: Config) -> int:
    from bootwatch.cli.entries import command_entries
    return command_entries(args.json, config, check=args.check)


def cmd_prove(args: argparse.Namespace, config: Config) -> int:
    from bootwatch.cli.prove import command_prove
    return command_prove(args, config)


def refuse_paths_for_demo(args: argparse.Namespace) -> None:
    """The demo builds its own throw-away tree and configuration and never watches a directory it
    is given: the common options are refused (before any is read), not ignored."""
    given = [option for option, value in (("--config", getattr(args, "config", None)),
                                          ("--boot-dir", getattr(args, "boot_dir", None)),
                                          ("--cache-dir", getattr(args, "cache_dir", None))) if value is not None]
    if given:
        raise UsageError(f"demo: {' and '.join(given)} cannot be used: the demo builds a throw-away boot "
                         "directory, cache and configuration of its own, and never touches another",
                         hint="run 'bootwatch demo' alone; 'bootwatch entries' shows a real boot directory")


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    refuse_paths_for_demo(args)
    from bootwatch.cli.demo import run_demo
    return run_demo(keep=args.keep)
