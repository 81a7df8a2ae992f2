"""The ``bootwatch`` command line.

Every subcommand takes ``--config FILE``, ``--boot-dir DIR`` and ``--cache-dir DIR``, before or
after its name. Errors are one line on stderr (plus a hint), never a traceback; exit codes are 0
(ok), 1 (an operation failed, or verify/fsck found a problem), 2 (usage) and 78 (configuration).
The parser is :mod:`bootwatch.cli.parser`, the commands :mod:`bootwatch.cli.commands` and
:mod:`bootwatch.cli.pin`; this module reads the configuration, runs one and turns errors into
exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bootwatch.cli.commands import cmd_demo, refuse_paths_for_demo, scan_start
from bootwatch.cli.output import printable_output
from bootwatch.cli.parser import Command, build_parser
from bootwatch.config import Config, load_config
from bootwatch.errors import EXIT_FAILURE, BootwatchError, CacheMissingError, UsageError, describe_oserror


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
    # When this process began to read its inputs: scan's proof (bootwatch.scanproof) records only
    # inputs older than that by a margin.
    args.started = scan_start(args)
    try:
        if args.func is cmd_demo:
            refuse_paths_for_demo(args)  # before they are read: a --boot-dir that is not there is no typo here
        config = load_effective_config(args)
        command: Command = args.func
        return command(args, config)
    except CacheMissingError as e:
        error: BootwatchError = e
        if getattr(args, "cache_dir", None) is not None:
            # As for --boot-dir: a directory named on the command line that is not there is a
            # typo (a command that writes creates it; one that only reads gets here).
            error = UsageError("--cache-dir: no such directory", path=args.cache_dir, hint=e.hint)
        report_error(error)
        return error.exit_code
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
