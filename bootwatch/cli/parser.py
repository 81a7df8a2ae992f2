"""The command line's one definition: every subcommand, its options and the function that runs it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Callable

from bootwatch import __version__
from bootwatch.cli.commands import (
    cmd_add,
    cmd_check_config,
    cmd_clean,
    cmd_demo,
    cmd_entries,
    cmd_fsck,
    cmd_gc,
    cmd_list,
    cmd_pin,
    cmd_prove,
    cmd_remove,
    cmd_restore,
    cmd_run,
    cmd_scan,
    cmd_show,
    cmd_status,
    cmd_verify,
)
from bootwatch.config import Config
from bootwatch.prove.vm import DEFAULT_TIMEOUT, MEMORY_BOUNDS_MIB, MIN_MEMORY_MIB, TIMEOUT_BOUNDS, AccelChoice

Command = Callable[[argparse.Namespace, Config], int]

# An image id as restore --image takes it: all of it, or a prefix long enough to be typed from 'list'.
IMAGE_ID_PREFIX = re.compile(r"[0-9a-f]{8,40}")


def add_common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("common options")
    group.add_argument("--config", type=Path, metavar="FILE", default=default,
                       help="configuration file (default: $BOOTWATCH_CONFIG or /etc/bootwatch/bootwatch.toml)")
    group.add_argument("--boot-dir", type=Path, metavar="DIR", default=default,
                       help="boot directory (overrides [paths] boot)")
    group.add_argument("--cache-dir", type=Path, metavar="DIR", default=default,
                       help="cache directory (overrides [paths] cache)")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    low, high = TIMEOUT_BOUNDS
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"not between {low:g} and {high:g} seconds: {text!r}")
    return value


def _image_id_or_prefix(text: str) -> str:
    if IMAGE_ID_PREFIX.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not an image id (8 to 40 lowercase hexadecimal digits)")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    low, high = MEMORY_BOUNDS_MIB
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"not between {low} and {high}: {text!r}")
    return value


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
    p = command("restore", cmd_restore, "copy a MISSING image back into the boot directory; with --image, put "
                                        "that image of PATH in place of the file there")
    p.add_argument("--image", type=_image_id_or_prefix, metavar="ID",
                   help="one of PATH's images (its id, or at least 8 of its first digits that no other image of "
                        "PATH starts with), put back even over a file that is there (one written broken)")
    p.add_argument("--force", action="store_true",
                   help="restore even where it leaves /boot (or the ESP) without room for one more kernel and "
                        "initramfs (the headroom); never where the file does not fit, and no other check is skipped")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = command("list", cmd_list, "list cached paths with their state")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = command("entries", cmd_entries, "list every boot entry of the host (BLS, UKI, GRUB) with its files, "
                                        "what the cache holds of them and whether it would boot (its state and "
                                        "findings); exit 1 if a source cannot be read")
    p.add_argument("--json", action="store_true", help="print a JSON object (sources and entries)")
    p.add_argument("--check", action="store_true", help="exit 1 also when an entry is BROKEN (one line on stderr "
                                                        "for each)")
    p = command("prove", cmd_prove, "boot entries' own kernel and initramfs in a throwaway QEMU VM (no disk, "
                                    "no network) and check that the initramfs's /init ran; exit 1 if one failed")
    p.add_argument("entries", nargs="*", metavar="ENTRY", help="entry id as 'bootwatch entries' shows it "
                                                                "(SOURCE:ID when two sources have it)")
    p.add_argument("--all", action="store_true", help="prove every entry")
    p.add_argument("--timeout", type=_positive_seconds, default=None, metavar="SECONDS",
                   help=f"time bound of each VM (default: [prove] timeout, {DEFAULT_TIMEOUT:g})")
    p.add_argument("--memory", type=_positive_int, default=None, metavar="MIB",
                   help=f"memory of the VM (default: [prove] memory, else from the initramfs's size, "
                        f"at least {MIN_MEMORY_MIB})")
    p.add_argument("--accel", choices=[a.value for a in AccelChoice], default=None,
                   help="auto: KVM when /dev/kvm works, else (or when KVM cannot start the VM) TCG "
                        "(default: [prove] accel, auto)")
    p.add_argument("--json", action="store_true", help="print a JSON array of the proofs")
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
    p.add_argument("--no-restore", action="store_true",
                   help="cache and forget, but restore nothing (the package hooks' pass when a kernel is "
                        "removed: the daemon decides on restores after the package transaction)")
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
