"""A real ``bootwatch run`` child process with a real sd_notify socket, for the daemon tests.

The test binds an ``AF_UNIX``/``SOCK_DGRAM`` socket and passes it as ``NOTIFY_SOCKET``, exactly
as systemd does, and reads what the daemon says on it. Nothing of the daemon is replaced.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_config(path: Path, boot_dir: Path, cache_dir: Path, runtime_dir: Path,
                 **sections: dict[str, object]) -> Path:
    """A TOML config for a test tree; ``sections`` add keys, e.g. ``watch={"settle": "100ms"}``."""
    data: dict[str, dict[str, object]] = {
        "paths": {"boot": str(boot_dir), "cache": str(cache_dir), "runtime": str(runtime_dir)}}
    for name, keys in sections.items():
        data.setdefault(name, {}).update(keys)
    lines = []
    for name, keys in data.items():
        lines.append(f"[{name}]")
        for key, value in keys.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_with_config(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m bootwatch --config FILE ARGS`` as a child; the repository importable."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONDONTWRITEBYTECODE="1")
    env.pop("BOOTWATCH_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "bootwatch", "--config", str(config), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


class DaemonProcess:
    """``python -m bootwatch --config FILE run`` with ``NOTIFY_SOCKET`` bound by the test."""

    def __init__(self, config: Path, workdir: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.notify_path = workdir / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.messages: list[dict[str, str]] = []
        child_env = dict(os.environ)
        child_env.update({
            "NOTIFY_SOCKET": str(self.notify_path),
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        child_env.pop("BOOTWATCH_CONFIG", None)
        child_env.pop("JOURNAL_STREAM", None)
        child_env.update(env or {})
        self.log_path = workdir / "daemon.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 (the daemon's stdout until close())
        self.proc = subprocess.Popen([sys.executable, "-m", "bootwatch", "--config", str(config), "run"],
                                     env=child_env, stdout=self.log, stderr=subprocess.STDOUT)

    # ---------------------------------------------------------------- sd_notify

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return None
        message = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append(message)
        return message

    def wait_message(self, key: str, value: str | None = None, timeout: float = 30.0) -> dict[str, str]:
        """The next message that sets ``key`` (to ``value``), reading on from where we are."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None and remaining < timeout - 1:
                raise AssertionError(f"no {key}={value or '*'} from the daemon (exit code {self.proc.poll()}); "
                                     f"log:\n{self.output()}")
            message = self.receive(min(remaining, 0.5))
            if message and key in message and (value is None or message[key] == value):
                return message

    def wait_ready(self, timeout: float = 30.0) -> dict[str, str]:
        return self.wait_message("READY", "1", timeout)

    # ---------------------------------------------------------------- life

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def close(self) -> None:
        self.stop()
        self.sock.close()
        self.log.close()

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
