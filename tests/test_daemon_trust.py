"""The daemon under pressure, as real child processes: a second daemon on the same cache, a lock
held by another process, I/O errors of the cache's file system, verification racing deletions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from daemonproc import DaemonProcess, run_with_config, write_config

BootTree = Any  # conftest.BootTree (the boot_tree fixture)


@pytest.fixture
def tree_with_kernel(boot_tree: BootTree) -> BootTree:
    boot_tree.write_kernel("1.0")
    boot_tree.write_entry("one", linux="/vmlinuz-1.0", initrd=["/initramfs-1.0.img"])
    return boot_tree


def config_for(tree: BootTree, name: str, runtime: str = "run", **sections: Any) -> Path:
    return write_config(tree.root / name, tree.boot, tree.cache, tree.root / runtime,
                        watch={"settle": "150ms"}, **sections)


# ------------------------------------------------------------------ two daemons on one cache

def test_second_daemon_on_the_same_cache_is_refused(tree_with_kernel: BootTree) -> None:
    tree = tree_with_kernel
    config = config_for(tree, "daemon.toml")
    # Another runtime directory (another status file) but the same cache: still refused.
    other_runtime = config_for(tree, "other.toml", runtime="run-other")
    (tree.root / "a").mkdir()
    (tree.root / "b").mkdir()
    (tree.root / "c").mkdir()
    with DaemonProcess(config, tree.root / "a") as first:
        first.wait_ready()
        for second_config, workdir in ((config, tree.root / "b"), (other_runtime, tree.root / "c")):
            with DaemonProcess(second_config, workdir) as second:
                assert second.proc.wait(60) == 1
                output = second.output()
                lines = output.splitlines()
                assert "Traceback" not in output
                assert len(lines) == 1, output
                assert f"PID {first.proc.pid} " in lines[0] and "another bootwatch daemon" in lines[0], output
                assert str(tree.cache) in lines[0]
                assert not any(m.get("READY") == "1" for m in second.messages)
            # The refused daemon has exited: the first is still the one that runs.
            result = run_with_config(config, "status", "--json")
            status = json.loads(result.stdout)
            assert result.returncode == 0 and status["running"] and status["pid"] == first.proc.pid, result
        assert first.proc.poll() is None
    # Once the first has stopped, a new daemon starts.
    (tree.root / "d").mkdir()
    with DaemonProcess(config, tree.root / "d") as again:
        again.wait_ready()
