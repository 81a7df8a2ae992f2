"""Generates bootwatch's man pages and bash completion from its one command line definition and
configuration schema; ``contrib/generate-docs`` runs it (see its usage)."""

from __future__ import annotations

import argparse
import datetime
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .commandline import read_command_line
from .completion import bash_completion
from .manpages import bootwatch_8, bootwatch_toml_5

# Where each generated file goes, under the output directory.
MAN_8 = Path("man/bootwatch.8")
MAN_5 = Path("man/bootwatch.toml.5")
COMPLETION = Path("completion/bootwatch")


def page_date(environ: Mapping[str, str]) -> str:
    """The pages' date: that of $SOURCE_DATE_EPOCH (set by dpkg-buildpackage and rpmbuild, so that
    a build is reproducible), else none."""
    epoch = environ.get("SOURCE_DATE_EPOCH", "")
    if not epoch.isdigit():
        return ""
    return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).strftime("%Y-%m-%d")


def generate(environ: Mapping[str, str] = os.environ) -> dict[Path, str]:
    """Every generated file's text, by its path under the output directory."""
    cli = read_command_line()
    date = page_date(environ)
    return {MAN_8: bootwatch_8(cli, date), MAN_5: bootwatch_toml_5(date), COMPLETION: bash_completion(cli)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="contrib/generate-docs",
        description=f"Write {MAN_8}, {MAN_5} and {COMPLETION} under OUTDIR, generated from bootwatch's command "
                    "line (bootwatch/cli/parser.py) and configuration schema (bootwatch/config.py).")
    parser.add_argument("outdir", type=Path, nargs="?", default=Path("build/docs"), metavar="OUTDIR",
                        help="where to write them (default: build/docs)")
    args = parser.parse_args(argv)
    for relative, text in generate().items():
        path = args.outdir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(path.name + ".tmp")
        temp.write_text(text, encoding="ascii")
        temp.replace(path)
        print(path)
    return 0
