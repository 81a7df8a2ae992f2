"""Configuration values that parse but cannot work are refused (exit 78, one line naming the file).

Durations have bounds; /, system directories and the kernel's virtual filesystems are never a
boot, cache or runtime directory; the cache is not the boot directory nor holds it. Checked by
real ``bootwatch check-config`` and other commands as child processes, and by the real daemon on
SIGHUP, which keeps its running configuration and says READY=1 again.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess, run_with_config, write_config
from polling import wait_for

BootTree = Any  # conftest.BootTree


def one_line_error(result, *, code: int, names) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("bootwatch: hint:")]
    assert len(lines) == 1 and lines[0].startswith("bootwatch: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


BAD_FILES = {
    "rescan_interval of a billion days": ('[watch]\nrescan_interval = "1000000000d"\n', "[watch] rescan_interval"),
    "rescan_interval beyond a float": ('[watch]\nrescan_interval = "' + "9" * 400 + 'd"\n', "[watch] rescan_interval"),
    "huge settle": ('[watch]\nsettle = "100000d"\n', "[watch] settle"),
    "settle below a millisecond": ('[watch]\nsettle = "0.0001s"\n', "[watch] settle"),
    "clean_interval of a year": ('[jobs]\nclean_interval = "365d"\n', "[jobs] clean_interval"),
    "gc_interval of a week": ('[jobs]\ngc_interval = "7d"\n', "[jobs] gc_interval"),
    "verify_interval of ten years": ('[jobs]\nverify_interval = "3650d"\n', "[jobs] verify_interval"),
    "boot is /": ('[paths]\nboot = "/"\n', "[paths] boot"),
    "boot is /etc/": ('[paths]\nboot = "/etc/"\n', "[paths] boot"),
    "cache is /": ('[paths]\ncache = "/"\n', "[paths] cache"),
    "cache is /etc": ('[paths]\ncache = "/etc"\n', "[paths] cache"),
    "cache is /usr": ('[paths]\ncache = "/usr"\n', "[paths] cache"),
    "cache is /var": ('[paths]\ncache = "/var"\n', "[paths] cache"),
    "cache in /proc": ('[paths]\ncache = "/proc/self/cwd"\n', "[paths] cache"),
    "cache in /dev": ('[paths]\ncache = "/dev/shm/cache"\n', "[paths] cache"),
    "runtime is /run": ('[paths]\nruntime = "/run"\n', "[paths] runtime"),
    "cache is the boot directory": ('[paths]\nboot = "/srv/b"\ncache = "/srv/b"\n', "is the boot directory"),
    "boot inside the cache": ('[paths]\nboot = "/srv/c/boot"\ncache = "/srv/c"\n', "inside the cache"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_check_config_refuses_an_unusable_value(tmp_path: Path, case: str) -> None:
    text, what = BAD_FILES[case]
    config = tmp_path / "bootwatch.toml"
    config.write_text(text)
    one_line_error(run_with_config(config, "check-config", timeout=30), code=78, names=[str(config), what])


@pytest.mark.parametrize("command", [("list",), ("clean", "--dry-run"), ("status",)])
def test_every_command_refuses_an_unusable_value(tmp_path: Path, command) -> None:
    config = tmp_path / "bootwatch.toml"
    config.write_text('[paths]\ncache = "/etc"\n')
    one_line_error(run_with_config(config, *command, timeout=30), code=78, names=[str(config), "[paths] cache"])


def test_values_at_the_bounds_are_accepted(tmp_path: Path) -> None:
    config = tmp_path / "bootwatch.toml"
    config.write_text('[watch]\nsettle = "1ms"\nrescan_interval = "7d"\n[jobs]\nclean_interval = "30d"\n'
                      'gc_interval = "1s"\nverify_interval = "365d"\n'
                      f'[paths]\nboot = "{tmp_path}/boot"\ncache = "{tmp_path}/boot/boom/cache"\n')
    result = run_with_config(config, "check-config", timeout=30)
    assert result.returncode == 0, result.stderr
    assert 'rescan_interval = "7d"' in result.stdout and 'verify_interval = "365d"' in result.stdout


@pytest.mark.parametrize("option, value", [("--cache-dir", "/"), ("--cache-dir", "/etc"), ("--boot-dir", "/"),
                                           ("--cache-dir", "BOOT")])
def test_the_command_line_may_not_name_a_system_directory_either(boot_tree: BootTree, option: str,
                                                                 value: str) -> None:
    value = str(boot_tree.boot) if value == "BOOT" else value
    rc, out, err = boot_tree.cli_bare(option, value, "--boot-dir" if option == "--cache-dir" else "--cache-dir",
                                      str(boot_tree.boot if option == "--cache-dir" else boot_tree.cache), "list")
    boot_tree.assert_clean_error(rc, err, expected_rc=2, names=[option.split("-")[-1]])


@pytest.mark.slow
def test_reload_with_an_unusable_value_keeps_the_running_configuration(boot_tree: BootTree) -> None:
    boot_tree.write_file("/vmlinuz-1")
    boot_tree.write_entry("one", linux="/vmlinuz-1")
    config = write_config(boot_tree.root / "daemon.toml", boot_tree.boot, boot_tree.cache, boot_tree.root / "run",
                          watch={"settle": "150ms"})
    good = config.read_text()
    root = boot_tree.root
    bad_configs = [
        lambda: write_config(config, boot_tree.boot, boot_tree.cache, root / "run",
                             watch={"settle": "150ms", "rescan_interval": "1000000000d"}),
        lambda: write_config(config, boot_tree.boot, boot_tree.cache, root / "run", watch={"settle": "100000d"}),
        lambda: write_config(config, boot_tree.boot, Path("/etc"), root / "run", watch={"settle": "150ms"}),
    ]
    with DaemonProcess(config, boot_tree.root) as daemon:
        daemon.wait_ready()
        for refused, write_bad in enumerate(bad_configs, 1):
            write_bad()
            daemon.signal(signal.SIGHUP)
            daemon.wait_message("RELOADING", "1")
            daemon.wait_ready()
            wait_for(lambda refused=refused: daemon.output().count("keeping the running configuration") >= refused,
                     what=f"reload {refused} refused")
            assert daemon.proc.poll() is None
        assert daemon.output().count("keeping the running configuration") == 3, daemon.output()
        # The old configuration still works: a new kernel is cached after the settle it had.
        config.write_text(good)
        boot_tree.write_file("/vmlinuz-2")
        boot_tree.write_entry("two", linux="/vmlinuz-2")
        wait_for(lambda: "/vmlinuz-2" in boot_tree.read_index()["index"], what="/vmlinuz-2 cached")
        assert "Traceback" not in daemon.output(), daemon.output()
