"""bootwatch(8) and bootwatch.toml(5) as contrib/generate-docs writes them, read with the real man
(man-db, groff): every command and option of the parser and every key of the schema is in its
place, groff warns about nothing, and a parser or schema that changes changes the pages."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from docgen_support import docgen, generate_into, read_command_line, require_tool

from bootwatch import errors
from bootwatch.cli.parser import build_parser
from bootwatch.config import SCHEMA, Key, Section, ValueKind

pytestmark = pytest.mark.slow  # man and groff runs


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_into(tmp_path_factory.mktemp("docs"))


def man(page: Path, width: int = 80) -> str:
    """The page as `man` shows it, plain text; any warning of man or groff fails the test."""
    require_tool("man", "man-db")
    env = {**os.environ, "MANWIDTH": str(width), "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
    env.pop("MANPAGER", None)
    env.pop("PAGER", None)
    proc = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", f"man warns about {page.name}:\n{proc.stderr}"
    return proc.stdout


def groff_warnings(page: Path) -> str:
    require_tool("groff", "groff-base")
    proc = subprocess.run(["groff", "-ww", "-z", "-man", str(page)], capture_output=True, text=True, timeout=60)
    return proc.stderr


def sections(text: str, pattern: str) -> dict[str, str]:
    """The rendered page cut at its headings: ``pattern`` matches a heading line, group 1 its name."""
    found: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        match = re.fullmatch(pattern, line)
        if match:
            name = match.group(1)
            found[name] = ""
        elif name is not None:
            found[name] += line + "\n"
    return found


def test_pages_render_without_warnings(generated: dict[str, Path]) -> None:
    require_tool("lexgrog", "man-db")
    whatis = subprocess.run(["lexgrog", str(generated["bootwatch.8"]), str(generated["bootwatch.toml.5"])],
                            capture_output=True, text=True, timeout=60)
    # The NAME lines as mandb and lintian read them: the whatis database's entries.
    assert whatis.returncode == 0 and whatis.stderr == "", whatis.stderr
    assert '"bootwatch - keep every boot entry of this host bootable"' in whatis.stdout
    assert '"bootwatch.toml - configuration of bootwatch(8)"' in whatis.stdout
    for name in ("bootwatch.8", "bootwatch.toml.5"):
        assert groff_warnings(generated[name]) == "", name
        text = man(generated[name], 80)
        assert max(len(line) for line in text.splitlines()) <= 80, name


def test_bootwatch_8_has_every_command_and_option_in_its_place(generated: dict[str, Path]) -> None:
    text = man(generated["bootwatch.8"])
    cli = read_command_line()
    commands = sections(text, r"   bootwatch (\S+)")
    assert list(commands) == [c.name for c in cli.commands]
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in subparsers.choices.items():
        body = commands[name]
        for action in sub._actions:
            for option in action.option_strings:
                if option in ("-h", "--help", "--config", "--boot-dir", "--cache-dir"):
                    continue  # said once, for every command
                assert re.search(rf"(^|\s|\[){re.escape(option)}(\s|\]|,|$)", body, re.M), \
                    f"bootwatch {name} {option} is not in its section of bootwatch(8)"
            if not action.option_strings and isinstance(action.metavar, str):
                assert action.metavar in body, f"bootwatch {name} {action.metavar}"
        assert " ".join(cli.commands[list(commands).index(name)].help.split()[:3]).lower() in \
            " ".join(body.split()).lower()
    top = sections(text, r"([A-Z][A-Z ]+)")
    for option in ("--help", "--version", "--config", "--boot-dir", "--cache-dir"):
        assert option in top["OPTIONS"]
    assert {"NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS", "SIGNALS", "ENVIRONMENT",
            "FILES", "EXAMPLES", "SEE ALSO"} <= set(top)


def test_bootwatch_8_exit_codes_are_errors_constants(generated: dict[str, Path]) -> None:
    top = sections(man(generated["bootwatch.8"]), r"([A-Z][A-Z ]+)")
    listed = {int(m) for m in re.findall(r"^ {7}(\d+)\s", top["EXIT STATUS"], re.M)}
    constants = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    assert constants <= listed, f"exit codes of errors.py missing from bootwatch(8): {constants - listed}"


def test_bootwatch_8_signals_are_those_the_daemon_handles(generated: dict[str, Path]) -> None:
    service = (REPO_ROOT / "bootwatch" / "daemon" / "service.py").read_text()
    handled = set(re.findall(r"signal\.signal\(signal\.(SIG[A-Z]+)", service))
    assert handled, "daemon/service.py installs no signal handler any more: update this test"
    top = sections(man(generated["bootwatch.8"]), r"([A-Z][A-Z ]+)")
    documented = set(re.findall(r"^ {7}(SIG[A-Z]+)", top["SIGNALS"], re.M))
    assert documented == handled


def test_bootwatch_8_files_name_the_real_defaults(generated: dict[str, Path]) -> None:
    files = sections(man(generated["bootwatch.8"]), r"([A-Z][A-Z ]+)")["FILES"]
    for path in ("/etc/bootwatch/bootwatch.toml", "/etc/bootwatch/bootwatch.toml.d/*.toml",
                 "/var/lib/bootwatch/cache", "/var/lib/bootwatch/cache/cacheindex.json",
                 "/run/bootwatch/status.json", "/run/bootwatch/proofs/"):
        assert re.search(rf"^ {{7}}{re.escape(path)}$", files, re.M), path


def test_bootwatch_toml_5_has_every_key_with_type_and_default(generated: dict[str, Path]) -> None:
    text = man(generated["bootwatch.toml.5"])
    rendered = sections(text, r"\[(\w+)\]")
    assert list(rendered) == [s.name for s in SCHEMA]
    for section in SCHEMA:
        body = rendered[section.name]
        items = sections(body, r" {7}(\w+) \(.*")
        assert list(items) == [k.name for k in section.keys], section.name
        for key in section.keys:
            item = " ".join(items[key.name].split())
            assert " ".join(key.help.split()[:4]) in item, f"[{section.name}] {key.name}: its help"
            if key.default is not None:
                assert f"Default: {docgen.manpages.toml_value(key.default)}." in item, f"[{section.name}] {key.name}"
        for line in body.splitlines():
            match = re.fullmatch(r" {7}(\w+) \((.*)\)", line)
            if match:
                assert match.group(2), f"[{section.name}] {match.group(1)}: no type"


def test_a_new_option_and_key_reach_the_pages(tmp_path: Path) -> None:
    """The pages are made from the parser and the schema, nothing else: what is added to either is
    in them, rendered as man renders it."""
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    restore = subparsers.choices["restore"]
    restore.add_argument("--not-yet", metavar="ID", help=".restore this image id, not the newest \\ 'quoted'\tnaïve")
    cli = read_command_line(parser)
    key = Key("interval", ValueKind.DURATION, lambda v: v, "1w", "How often to prove every entry.")
    schema = (*SCHEMA, Section("prove", (key,)))
    page8 = tmp_path / "bootwatch.8"
    page8.write_text(docgen.manpages.bootwatch_8(cli, "2026-01-01"))
    page5 = tmp_path / "bootwatch.toml.5"
    page5.write_text(docgen.manpages.bootwatch_toml_5("2026-01-01", schema))
    assert groff_warnings(page8) == groff_warnings(page5) == ""
    restore_text = " ".join(sections(man(page8), r"   bootwatch (\S+)")["restore"].split())
    # The help's leading dot and backslash are text, not a roff request and an escape; 'a command'
    # is set in bold, without its quotes.
    assert "--not-yet ID .restore this image id, not the newest \\ quoted naïve." in restore_text
    assert "[--not-yet ID]" in restore_text
    prove = " ".join(sections(man(page5), r"\[(\w+)\]")["prove"].split())
    assert 'interval (duration) How often to prove every entry. Default: "1w".' in prove


def test_every_metavar_has_a_completion_kind() -> None:
    """A new metavar must be given a meaning (contrib/docgen/commandline.py METAVAR_VALUES), so
    that the completion knows what to offer for it."""
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    metavars = {a.metavar for p in (parser, *subparsers.choices.values()) for a in p._actions
                if isinstance(a.metavar, str) and a is not subparsers}
    assert metavars <= set(docgen.commandline.METAVAR_VALUES), metavars - set(docgen.commandline.METAVAR_VALUES)


def test_page_date_is_source_date_epoch() -> None:
    assert docgen.page_date({"SOURCE_DATE_EPOCH": "1767225600"}) == "2026-01-01"
    assert docgen.page_date({}) == ""
    first = docgen.generate({"SOURCE_DATE_EPOCH": "1767225600"})
    assert first == docgen.generate({"SOURCE_DATE_EPOCH": "1767225600"})  # reproducible
    assert '.TH "BOOTWATCH" 8 "2026\\-01\\-01"' in first[docgen.MAN_8]


def test_pages_are_ascii_roff() -> None:
    for text in docgen.generate({}).values():
        text.encode("ascii")
    for relative in (docgen.MAN_8, docgen.MAN_5):
        page = docgen.generate({})[relative]
        for line in page.splitlines():
            assert not line.startswith(" "), line
            assert line.startswith((".", "\\")) or not line.startswith("'"), line
