"""``verify`` and ``prove`` show progress (the count and the current image or entry) on a
terminal: one line on stderr, written over in place with ``\\r`` and cleared at the end. Piped,
they print nothing extra. The terminal is a real pseudo-terminal (os.openpty) on the child's
stderr, its stdout a pipe, so the two streams are read apart."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time

from conftest import BootTree, subprocess_env

CLEAR = b"\r\x1b[K"


def run_on_pty(tree: BootTree, *args: str, env: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
    """``bootwatch --boot-dir --cache-dir ARGS`` with stderr a real terminal and stdout a pipe:
    (exit code, stdout, every byte written to the terminal)."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "bootwatch", "--boot-dir", str(tree.boot),
                                 "--cache-dir", str(tree.cache), *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                                env=subprocess_env(tree.config, env), cwd=tree.root)
    finally:
        os.close(slave)
    terminal = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal's last descriptor
                break
            if not chunk:
                break
            terminal += chunk
        assert proc.stdout is not None
        out = proc.stdout.read()
        rc = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, out, terminal


def run_piped(tree: BootTree, *args: str, env: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
    proc = subprocess.run([sys.executable, "-m", "bootwatch", "--boot-dir", str(tree.boot), "--cache-dir",
                           str(tree.cache), *args], env=subprocess_env(tree.config, env), cwd=tree.root,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def cached_tree(tree: BootTree) -> dict[str, str]:
    ids = {**tree.write_kernel("6.1.0"), **tree.write_kernel("6.2.0")}
    assert tree.cli("add", *ids)[0] == 0
    return ids


def test_verify_shows_progress_on_a_terminal_and_clears_it(boot_tree: BootTree) -> None:
    ids = cached_tree(boot_tree)
    rc, out, terminal = run_on_pty(boot_tree, "verify")
    assert rc == 0, (out, terminal)
    # One line per image, each written over the last (\r, erase to the end of the line), then cleared.
    shown = re.findall(rb"\r(verifying (\d)/4: ([0-9a-f]{12}) (/\S+))\x1b\[K", terminal)
    assert [int(n) for _, n, _, _ in shown] == [1, 2, 3, 4], terminal
    assert {(image.decode(), path.decode()) for _, _, image, path in shown} == \
        {(sha1[:12], path) for path, sha1 in ids.items()}
    assert terminal.endswith(CLEAR), terminal
    assert b"\n" not in terminal, "progress is one line, written over in place"
    # What stdout says is the same as without a terminal: the progress is stderr's alone.
    assert b"\r" not in out and b"verifying" not in out
    rc, piped_out, piped_err = run_piped(boot_tree, "verify")
    assert rc == 0
    assert piped_err == b"", "nothing extra when stderr is not a terminal"
    assert piped_out == out
    assert len([line for line in out.splitlines() if line.startswith(b"ok ")]) == 4


def test_verify_json_on_a_terminal_keeps_stdout_json(boot_tree: BootTree) -> None:
    import json
    cached_tree(boot_tree)
    rc, out, terminal = run_on_pty(boot_tree, "verify", "--json")
    assert rc == 0
    assert len(json.loads(out)) == 4
    assert b"verifying 4/4" in terminal and terminal.endswith(CLEAR)


def prove_tree(tree: BootTree) -> None:
    tree.write_kernel("6.1.0")
    tree.write_kernel("6.2.0")
    for version in ("6.1.0", "6.2.0"):
        tree.write_entry(f"test-{version}", linux=f"/vmlinuz-{version}", initrd=[f"/initramfs-{version}.img"])
    tree.config.write_text(f'[paths]\nruntime = "{tree.root / "run"}"\n')


# No QEMU on the PATH: each proof is NOT RUN at once, the progress and the results are the same.
NO_QEMU = {"PATH": "/nonexistent"}


def test_prove_shows_progress_on_a_terminal_and_clears_it_before_each_result(boot_tree: BootTree) -> None:
    prove_tree(boot_tree)
    rc, out, terminal = run_on_pty(boot_tree, "prove", "--all", env=NO_QEMU)
    assert rc == 0, (out, terminal)
    shown = re.findall(rb"\rproving (\d)/2: (test-6\.[12]\.0\.conf) \(bls\) \.\.\.\x1b\[K", terminal)
    assert [(int(n), entry.decode()) for n, entry in shown] == [(1, "test-6.1.0.conf"), (2, "test-6.2.0.conf")], \
        terminal
    # Cleared before each result is printed (stdout may be the same terminal), so none is left.
    assert terminal.count(CLEAR) == 2 and terminal.endswith(CLEAR), terminal
    assert b"proving" not in out
    results = out.decode().splitlines()
    assert len(results) == 2 and all(line.startswith("NOT RUN: test-6.") for line in results), \
        results
    rc, piped_out, piped_err = run_piped(boot_tree, "prove", "--all", env=NO_QEMU)
    assert rc == 0
    assert piped_err == b"", "nothing extra when stderr is not a terminal"
    assert piped_out == out
