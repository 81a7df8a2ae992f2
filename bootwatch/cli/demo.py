"""``bootwatch demo``: the point of bootwatch in one minute, without touching /boot.

It builds a throw-away boot tree in a temp directory, starts the real daemon on it (a child
``bootwatch run``), and plays three scenes: a kernel install, the removal of a kernel that a
snapshot's boot entry still needs, and a cached image that rots. After each it prints what the
daemon logged. Everything is removed at the end (``--keep`` keeps the tree to look at).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Callable

SETTLE = "200ms"


def _write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A package manager writes a temp file and renames it into place.
    tmp = path.with_name(f".{path.name}.dpkg-new")
    tmp.write_bytes(os.urandom(size))
    os.rename(tmp, path)


def _entry(entries: Path, name: str, title: str, version: str) -> None:
    (entries / f"{name}.conf").write_text(
        f"title {title}\nversion {version}\nlinux /vmlinuz-{version}\ninitrd /initramfs-{version}.img\n"
        "options root=/dev/mapper/vg-root ro\n")


class LogTail:
    """Collects the daemon's stderr lines in a thread, for printing after each scene."""

    def __init__(self, stream: IO[str]) -> None:  # a text pipe
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def take(self) -> list[str]:
        with self.lock:
            lines, self.lines = self.lines, []
        return lines


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _show(title: str, tail: LogTail, settle: float = 1.0) -> None:
    time.sleep(settle)
    print(f"\n== {title}")
    for line in tail.take():
        # "bootwatch[PID]: LEVEL message (fields)": keep the level and the message.
        text = line.split(": ", 1)[-1]
        print(f"   bootwatch: {text.split(' (event=')[0]}")


@contextlib.contextmanager
def _daemon(config: Path) -> Iterator[LogTail]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "BOOTWATCH_CONFIG"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "bootwatch", "--config", str(config), "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    tail = LogTail(proc.stderr)
    try:
        yield tail
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="bootwatch-demo."))
    boot, cache, entries = root / "boot", root / "cache", root / "boot" / "loader" / "entries"
    entries.mkdir(parents=True)
    config = root / "bootwatch.toml"
    config.write_text(f'[paths]\nboot = "{boot}"\ncache = "{cache}"\nruntime = "{root / "run"}"\n\n'
                      f'[watch]\nsettle = "{SETTLE}"\n')
    try:
        print(f"A throw-away boot tree in {root}, with two kernels and a snapshot entry:")
        for version in ("6.1.0-1", "6.1.0-2"):
            _write(boot / f"vmlinuz-{version}", 256 * 1024)
            _write(boot / f"initramfs-{version}.img", 128 * 1024)
            _entry(entries, version, f"Debian {version}", version)
        _entry(entries, "snapshot-before-upgrade", "Snapshot before upgrade (boots 6.1.0-1)", "6.1.0-1")
        for line in sorted(str(p.relative_to(root)) for p in boot.rglob("*") if p.is_file()):
            print(f"   {line}")
        with _daemon(config) as tail:
            if not _wait(lambda: (cache / "cacheindex.json").exists()):
                print("the daemon did not start; its log:\n" + "\n".join(tail.take()), file=sys.stderr)
                return 1
            _show("bootwatch starts: it caches every image a boot entry names", tail)

            _write(boot / "vmlinuz-6.1.0-3", 256 * 1024)
            _write(boot / "initramfs-6.1.0-3.img", 128 * 1024)
            _entry(entries, "6.1.0-3", "Debian 6.1.0-3", "6.1.0-3")
            _show("A kernel is installed (image renamed into place, then its entry)", tail)

            print("\n== The package manager removes kernel 6.1.0-1 and its entry...")
            (boot / "vmlinuz-6.1.0-1").unlink()
            (boot / "initramfs-6.1.0-1.img").unlink()
            (entries / "6.1.0-1.conf").unlink()
            _show("...but the snapshot's entry still needs it, so bootwatch puts it back", tail, settle=1.5)
            restored = (boot / "vmlinuz-6.1.0-1").exists() and (boot / ".vmlinuz-6.1.0-1.boomrestored").exists()
            print(f"   /boot/vmlinuz-6.1.0-1 is back: {restored} (with boom's .boomrestored marker)")

            image = next(p for p in cache.glob("*.img"))
            with open(image, "r+b") as f:
                f.write(b"bit rot")
            _show(f"A cached image rots ({image.name[:12]}... overwritten in place)", tail, settle=1.5)

        print("\n== What the cache holds now (bootwatch list):")
        subprocess.run([sys.executable, "-m", "bootwatch", "--config", str(config), "list"], check=False,
                       env={k: v for k, v in os.environ.items() if k != "BOOTWATCH_CONFIG"})
        print("\nTry it on your host: systemctl enable --now bootwatch; journalctl -u bootwatch -f")
        if keep:
            print(f"\nKept {root} (run 'rm -r {root}' when done).")
        return 0
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
