"""``bootwatch demo``: the point of bootwatch in one minute, without touching /boot.

First it shows what bootwatch sees on a Debian 12 host, where GRUB boots kernels named by a
generated ``grub.cfg`` and there is no BLS entry: a sample ``/boot`` in a temp directory, with two
kernels and the ``grub.cfg`` Debian's ``update-grub`` writes for them (:func:`debian_grub_cfg`,
clearly labelled as a sample, never the host's), listed by ``bootwatch entries``.

Then it builds a throw-away boot tree with BLS entries, starts the real daemon on it (a child
``bootwatch run``), and plays three scenes: a kernel install, the removal of a kernel that a
snapshot's boot entry still needs, and a cached image that rots. After each it prints what the
daemon logged. Everything is removed at the end (``--keep`` keeps the trees to look at).
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


# A made-up filesystem UUID: the sample's root filesystem, which is no filesystem of this host.
SAMPLE_ROOT_UUID = "0d3b2c1a-5e4f-4a6b-8c7d-9e0f1a2b3c4d"
DEBIAN_KERNELS = ("6.1.0-17-amd64", "6.1.0-18-amd64")


def debian_grub_cfg(versions: tuple[str, ...], uuid: str = SAMPLE_ROOT_UUID) -> str:
    """A grub.cfg in the shape Debian 12's ``grub-mkconfig`` writes it (``/etc/grub.d/00_header``'s
    ``menuentry_id_option``, then ``10_linux``'s entries) for ``versions`` (newest last) on a
    root filesystem that holds ``/boot``, with ``GRUB_DISABLE_RECOVERY=true`` to keep it short:
    the newest kernel's simple entry, then an "Advanced options" submenu with one entry per kernel.
    The text is checked against the real grub-mkconfig's in tests/cli/test_demo.py."""
    def entry(title: str, entry_id: str, version: str, indent: str) -> str:
        body = [
            "load_video", "insmod gzio", "if [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi",
            "insmod ext2", f"search --no-floppy --fs-uuid --set=root {uuid}", f"echo\t'Loading Linux {version} ...'",
            f"linux\t/boot/vmlinuz-{version} root=UUID={uuid} ro  quiet", "echo\t'Loading initial ramdisk ...'",
            f"initrd\t/boot/initrd.img-{version}"]
        lines = [f"{indent}menuentry '{title}' --class debian --class gnu-linux --class gnu --class os "
                 f"$menuentry_id_option '{entry_id}' {{"]
        lines += [f"{indent}\t{line}" for line in body]
        return "\n".join(lines + [f"{indent}}}"])

    newest = versions[-1]
    parts = [
        "#\n# bootwatch demo: a SAMPLE grub.cfg, in the shape Debian 12's grub-mkconfig writes it\n"
        "# (/etc/grub.d/10_linux, GRUB_DISABLE_RECOVERY=true); not this host's.\n#",
        '### BEGIN /etc/grub.d/00_header ###\nif [ x"${feature_menuentry_id}" = xy ]; then\n'
        '  menuentry_id_option="--id"\nelse\n  menuentry_id_option=""\nfi\nexport menuentry_id_option\n'
        "### END /etc/grub.d/00_header ###",
        "### BEGIN /etc/grub.d/10_linux ###",
        entry("Debian GNU/Linux", f"gnulinux-simple-{uuid}", newest, ""),
        f"submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-{uuid}' {{",
        *(entry(f"Debian GNU/Linux, with Linux {v}", f"gnulinux-{v}-advanced-{uuid}", v, "\t")
          for v in reversed(versions)),
        "}",
        "### END /etc/grub.d/10_linux ###",
    ]
    return "\n".join(parts) + "\n"


def _bootwatch(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bootwatch", "--config", str(config), *args], check=False,
                          capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "BOOTWATCH_CONFIG"})


def show_debian_host(root: Path, config: Path) -> None:
    """A sample Debian 12 /boot (GRUB, no BLS) and what ``bootwatch entries`` lists in it."""
    boot = root / "debian12-sample" / "boot"
    for version in DEBIAN_KERNELS:
        _write(boot / f"vmlinuz-{version}", 64 * 1024)
        _write(boot / f"initrd.img-{version}", 32 * 1024)
    (boot / "grub").mkdir()
    (boot / "grub" / "grub.cfg").write_text(debian_grub_cfg(DEBIAN_KERNELS))
    print("== What bootwatch sees on a Debian 12 host: GRUB, no BLS entries")
    print(f"   A SAMPLE /boot in {boot} (not this host's): two kernels and the grub.cfg that Debian's\n"
          "   update-grub (grub-mkconfig, /etc/grub.d/10_linux) writes for them.")
    print(f"   $ bootwatch entries --boot-dir {boot}")
    listed = _bootwatch(config, "entries", "--boot-dir", str(boot), "--cache-dir", str(root / "debian12-sample" /
                                                                                       "cache"))
    for line in (listed.stdout + listed.stderr).splitlines():
        print(f"   {line}".rstrip())
    print("   On your host: sudo bootwatch entries\n")


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
        show_debian_host(root, config)
        print(f"A throw-away boot tree in {root}, with two kernels, their BLS entries and a snapshot entry:")
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
        listed = _bootwatch(config, "list")
        sys.stdout.write(listed.stdout + listed.stderr)
        print("\nTry it on your host: systemctl enable --now bootwatch; journalctl -u bootwatch -f")
        if keep:
            print(f"\nKept {root} (run 'rm -r {root}' when done).")
        return 0
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
