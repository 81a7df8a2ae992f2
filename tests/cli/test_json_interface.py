"""The ``--json`` documents are an interface, documented key for key in the README ("JSON output:
an interface"): each command's real output on a real boot tree (and, for ``status``, next to a
real daemon) has exactly the keys its table lists, so that the documentation cannot drift from
the code. A key added to a document fails here until the README lists it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import pytest
from conftest import BootTree
from daemonproc import REPO_ROOT, DaemonProcess, run_with_config, write_config

pytestmark = pytest.mark.slow  # real command-line runs and a real daemon

HEADING = re.compile(r"^#### `bootwatch (\S+)(?: PATH)? --json`$")
ROW = re.compile(r"^\| `([^`]+)` \| ([^|]+) \| ([^|]*) \|$")


class Documented:
    """One command's table: its keys, the maps among them (not descended into) and the keys a
    document carries only sometimes ("only when")."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.maps: set[str] = set()
        self.optional: set[str] = set()


def documented() -> dict[str, Documented]:
    tables: dict[str, Documented] = {}
    current: Documented | None = None
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        heading = HEADING.match(line)
        if heading:
            current = tables.setdefault(heading.group(1), Documented())
        elif line.startswith("#"):
            current = None
        elif current is not None and (row := ROW.match(line)):
            key, kind, meaning = row.group(1), row.group(2).strip(), row.group(3).strip()
            current.keys.add(key)
            if kind.startswith("object of"):
                current.maps.add(key)
            if meaning.startswith("only when"):
                current.optional.add(key)
    return tables


def key_paths(value: Any, maps: set[str], prefix: str = "") -> set[str]:
    """Every key of a document as the README writes it: ``a.b`` in an object, ``a[].b`` in each
    object of an array (a top-level array: its objects' keys); maps are not descended into."""
    paths: set[str] = set()
    if isinstance(value, list):
        for item in value:
            paths |= key_paths(item, maps, f"{prefix}[]" if prefix else "")
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            if path not in maps:
                paths |= key_paths(item, maps, path)
    return paths


def check(command: str, outputs: Iterable[Any], tables: dict[str, Documented]) -> None:
    table = tables.get(command)
    assert table is not None, f"README: no table for 'bootwatch {command} --json'"
    seen: set[str] = set()
    for output in outputs:
        keys = key_paths(output, table.maps)
        assert keys <= table.keys, f"{command} --json: keys the README does not list: {sorted(keys - table.keys)}"
        seen |= keys
    missing = table.keys - table.optional - seen
    assert not missing, f"{command} --json: the README lists keys its output lacks: {sorted(missing)}"


def test_every_json_document_has_exactly_the_documented_keys(boot_tree: BootTree) -> None:
    tables = documented()
    tree = boot_tree
    tree.config.write_text(f'[paths]\nruntime = "{tree.root / "run"}"\n')
    tree.write_kernel("6.1.0")  # random bytes: findings, and content checks that say so
    tree.write_entry("linux", linux="/vmlinuz-6.1.0", initrd=["/initramfs-6.1.0.img"])
    scan = tree.cli_json("scan", "--json")
    verify = json.loads(tree.cli("verify", "--json")[1])
    listed = tree.cli_json("list", "--json")
    assert listed and all(row["verified"]["checks"] for row in listed), "no verification to check the keys of"
    shown = tree.cli_json("show", "/vmlinuz-6.1.0", "--json")
    entries = json.loads(tree.cli("entries", "--json")[1])
    assert entries["entries"][0]["files"] and entries["entries"][0]["findings"]
    proofs = json.loads(tree.cli("prove", "--all", "--json", env={"PATH": "/nonexistent"})[1])
    assert proofs and proofs[0]["files"]
    gc = tree.cli_json("gc", "--json")
    fsck = tree.cli_json("fsck", "--json")
    clean = tree.cli_json("clean", "--json", "--dry-run")
    rc, out, err = tree.cli("status", "--json")
    assert rc == 3, err
    stopped = json.loads(out)

    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"})
    with DaemonProcess(config, tree.root) as daemon:
        daemon.wait_ready(timeout=60)
        result = run_with_config(config, "status", "--json")
        assert result.returncode == 0, result.stderr
        running = json.loads(result.stdout)
    assert running["entries"] is not None and running["entries_by_state"] is not None, running

    check("list", [listed], tables)
    check("list", [[shown]], tables)  # show's object is one of list's (the README says so)
    check("verify", [verify], tables)
    check("clean", [clean], tables)
    check("fsck", [fsck], tables)
    check("scan", [scan], tables)
    check("gc", [gc], tables)
    check("status", [stopped, running], tables)
    check("entries", [entries], tables)
    check("prove", [proofs], tables)


def test_every_command_with_json_has_a_table() -> None:
    """A command that takes --json is in the README's tables (the parser is the one definition)."""
    from bootwatch.cli.parser import build_parser
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]
    with_json = {name for name, p in sub.choices.items()  # type: ignore[attr-defined]
                 if any("--json" in a.option_strings for a in p._actions)}
    tables = set(documented())  # show's heading refers to list's table
    assert with_json == tables, f"commands with --json: {sorted(with_json)}; README tables: {sorted(tables)}"


def test_the_tables_are_found() -> None:
    """The parser of the README sees what a reader sees (a guard for the test itself)."""
    tables = documented()
    assert "running" in tables["status"].keys and "details_unavailable" in tables["status"].optional
    assert "counts" in tables["status"].maps and "verified.checks[].kind" in tables["list"].keys
