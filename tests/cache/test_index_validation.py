"""Hostile indexes, with real child processes: refused in one line, nothing lost.

Every command either refuses an index as corrupt (exit 1, one line naming cacheindex.json) or
handles it; the daemon starts on one and says so in STATUS. The property-based search over many
more indexes is test_index_property.py.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest
from daemonproc import DaemonProcess, write_config

BootTree = Any  # conftest.BootTree


def _index(tree: BootTree, mutate: Callable[[dict, str], None]) -> str:
    """A boom index of /vmlinuz-1 (cached, referenced), changed by ``mutate(data, image_id)``."""
    image_id = tree.write_file("/vmlinuz-1")
    tree.write_entry("one", linux="/vmlinuz-1")
    tree.cache.mkdir(mode=0o700)
    tree.image(image_id).write_bytes(tree.path("/vmlinuz-1").read_bytes())
    data: dict[str, Any] = {
        "index": {"/vmlinuz-1": [image_id]},
        "paths": {"/vmlinuz-1": {"path_mode": 0o100644, "path_uid": 0, "path_gid": 0, "path_attrs": {}}},
        "images": {image_id: {"image_ts": 1_700_000_000}}}
    mutate(data, image_id)
    text = json.dumps(data)
    tree.index_file.write_text(text)
    return image_id


def _set(table: str, field: str, value: object) -> Callable[[dict, str], None]:
    def mutate(data: dict, image_id: str) -> None:
        key = "/vmlinuz-1" if table == "paths" else image_id
        data[table][key][field] = value
    return mutate


ISSUE_CASES = {
    "NaN image_ts": _set("images", "image_ts", float("nan")),
    "Infinity image_ts": _set("images", "image_ts", float("inf")),
    "huge image_ts": _set("images", "image_ts", 10 ** 40),
    "huge path_mode": _set("paths", "path_mode", 2 ** 80),
    "bootwatch key a list": _set("images", "bootwatch", ["x"]),
    "bootwatch key a string": _set("paths", "bootwatch", "x"),
    "nested 50,000 deep": _set("paths", "path_attrs", "DEEP"),
}
COMMANDS = [("list",), ("list", "--json"), ("show", "/vmlinuz-1"), ("verify",), ("fsck",), ("clean",), ("scan",)]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(ISSUE_CASES))
def test_every_command_refuses_a_hostile_index_in_one_line(boot_tree: BootTree, case: str) -> None:
    image_id = _index(boot_tree, ISSUE_CASES[case])
    if case.startswith("nested"):
        deep = "[" * 50_000 + "]" * 50_000
        boot_tree.index_file.write_text(boot_tree.index_file.read_text().replace('"DEEP"', deep))
    before = boot_tree.index_bytes()
    for args in COMMANDS:
        rc, out, err = boot_tree.cli(*args)
        if args == ("fsck",):  # a report, not an error: the problem on stdout
            assert rc == 1 and not err and out.startswith("problem: ") and "cacheindex.json" in out, (out, err)
            continue
        boot_tree.assert_clean_error(rc, err, expected_rc=1, names=["cacheindex.json"])
        assert "internal error" not in err
    assert boot_tree.index_bytes() == before, "a refused index was rewritten"
    assert boot_tree.image(image_id).is_file(), "an image went while its index was refused"


@pytest.mark.slow
def test_verified_time_as_a_string_is_handled_by_every_command(boot_tree: BootTree) -> None:
    image_id = _index(boot_tree, _set("images", "bootwatch", {"verified": {"time": "yesterday", "ok": False,
                                                                           "message": "bad"}}))
    for args in COMMANDS:
        rc, out, err = boot_tree.cli(*args)
        assert rc in (0, 1) and "internal error" not in err and "Traceback" not in err, (args, rc, out, err)
    rc, out, err = boot_tree.cli("show", "/vmlinuz-1")
    assert rc == 0 and "Verified:" in out, (out, err)
    assert boot_tree.image(image_id).is_file()


def test_clean_refuses_a_repeated_id_and_keeps_the_only_image(boot_tree: BootTree) -> None:
    image_id = _index(boot_tree, lambda data, i: data["index"].__setitem__("/vmlinuz-1", [i, i, i]))
    before = boot_tree.index_bytes()
    rc, out, err = boot_tree.cli("clean")
    line = boot_tree.assert_clean_error(rc, err, expected_rc=1, names=["cacheindex.json", "/vmlinuz-1"])
    assert "more than once" in line
    assert boot_tree.image(image_id).is_file(), "clean deleted the only image of a referenced path"
    assert boot_tree.index_bytes() == before


@pytest.mark.slow
def test_the_daemon_starts_on_a_hostile_index_and_says_so(boot_tree: BootTree) -> None:
    _index(boot_tree, _set("images", "image_ts", float("nan")))
    config = write_config(boot_tree.root / "daemon.toml", boot_tree.boot, boot_tree.cache, boot_tree.root / "run",
                          watch={"settle": "150ms"})
    with DaemonProcess(config, boot_tree.root) as daemon:
        ready = daemon.wait_ready()
        assert "cacheindex.json" in ready.get("STATUS", ""), ready
        assert daemon.proc.poll() is None
        assert "Traceback" not in daemon.output(), daemon.output()


def _surrogate_path(data: dict, image_id: str) -> None:
    """An index path "/\\ud800" (JSON "\\ud800"): a lone surrogate, which no file name can be."""
    data["index"]["/\ud800"] = [image_id]
    data["paths"]["/\ud800"] = dict(data["paths"]["/vmlinuz-1"])


@pytest.mark.slow
@pytest.mark.parametrize("command", [("list",), ("list", "--json"), ("verify",), ("scan",),
                                     ("clean", "--force", "--dry-run")])
def test_an_index_path_with_a_lone_surrogate_is_corrupt_not_an_internal_error(boot_tree: BootTree,
                                                                              command: tuple) -> None:
    image_id = _index(boot_tree, _surrogate_path)
    before = boot_tree.index_bytes()
    rc, out, err = boot_tree.cli(*command)
    line = boot_tree.assert_clean_error(rc, err, expected_rc=1, names=["cacheindex.json"])
    assert "\\ud800" in line and "internal error" not in line, line
    assert boot_tree.index_bytes() == before, "a refused index was rewritten"
    assert boot_tree.image(image_id).is_file(), "an image went while its index was refused"


@pytest.mark.slow
def test_the_daemon_survives_an_index_path_with_a_lone_surrogate(boot_tree: BootTree) -> None:
    _index(boot_tree, _surrogate_path)
    config = write_config(boot_tree.root / "daemon.toml", boot_tree.boot, boot_tree.cache, boot_tree.root / "run",
                          watch={"settle": "150ms"})
    with DaemonProcess(config, boot_tree.root) as daemon:
        ready = daemon.wait_ready()
        assert "cacheindex.json" in ready.get("STATUS", ""), ready
        assert daemon.proc.poll() is None, daemon.output()
        assert "Traceback" not in daemon.output() and "internal error" not in daemon.output(), daemon.output()
