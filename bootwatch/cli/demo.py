"""``bootwatch demo``: the point of bootwatch in one minute, without touching /boot.

It builds a throw-away ``/boot`` in a temp directory, laid out as on a Debian 12 host: GRUB boots
the kernels that a generated ``grub.cfg`` names, and there is no BLS entry. The ``grub.cfg`` is
a sample in the shape Debian's ``update-grub`` writes (:func:`debian_grub_cfg`, labelled as a
sample in the file and on the screen), with a pinned fallback entry of ``/etc/grub.d/40_custom``.
``bootwatch entries`` lists what bootwatch sees there; then the real daemon (a child ``bootwatch
run``) watches it through three scenes: a kernel install, the removal of a kernel that the pinned
entry still needs, and a cached image that rots. After each it prints what the daemon logged.
Everything is removed at the end (``--keep`` keeps the tree to look at).
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

# Where systemd looks for a unit a package or an administrator installed (systemd.unit(5)).
UNIT_DIRS = (Path("/etc/systemd/system"), Path("/run/systemd/system"), Path("/usr/local/lib/systemd/system"),
             Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A package manager writes a temp file and renames it into place.
    tmp = path.with_name(f".{path.name}.dpkg-new")
    tmp.write_bytes(content)
    os.rename(tmp, path)


# A made-up filesystem UUID: the sample's root filesystem, which is no filesystem of this host.
SAMPLE_ROOT_UUID = "0d3b2c1a-5e4f-4a6b-8c7d-9e0f1a2b3c4d"
PINNED = "6.1.0-1"
"""The kernel the administrator pinned a fallback entry to (in /etc/grub.d/40_custom)."""


def debian_grub_cfg(versions: tuple[str, ...], uuid: str = SAMPLE_ROOT_UUID, *, pinned: str | None = None) -> str:
    """A grub.cfg in the shape Debian 12's ``grub-mkconfig`` writes it (``/etc/grub.d/00_header``'s
    ``menuentry_id_option``, then ``10_linux``'s entries) for ``versions`` (newest last) on a
    root filesystem that holds ``/boot``, with ``GRUB_DISABLE_RECOVERY=true`` to keep it short:
    the newest kernel's simple entry, then an "Advanced options" submenu with one entry per kernel.
    ``pinned``: an entry for that kernel version in ``/etc/grub.d/40_custom``, which update-grub
    copies as it is. The 10_linux part is checked against the real grub-mkconfig's in
    tests/cli/test_demo.py."""
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
    if pinned is not None:
        parts += [
            "### BEGIN /etc/grub.d/40_custom ###",
            "# This file provides an easy way to add custom menu entries.  Simply type the\n"
            "# menu entries you want to add after this comment.  Be careful not to change\n"
            "# the 'exec tail' line above.",
            f"menuentry 'Debian GNU/Linux {pinned} (pinned fallback)' {{\n"
            f"\tsearch --no-floppy --fs-uuid --set=root {uuid}\n"
            f"\tlinux /boot/vmlinuz-{pinned} root=UUID={uuid} ro\n"
            f"\tinitrd /boot/initrd.img-{pinned}\n}}",
            "### END /etc/grub.d/40_custom ###",
        ]
    return "\n".join(parts) + "\n"


def _update_grub(boot: Path, versions: tuple[str, ...]) -> None:
    """What update-grub does after a kernel package's installation or removal: a new grub.cfg,
    written beside the old one and renamed over it (grub-mkconfig's ``grub.cfg.new``)."""
    (boot / "grub").mkdir(exist_ok=True)
    new = boot / "grub" / "grub.cfg.new"
    new.write_text(debian_grub_cfg(versions, pinned=PINNED))
    os.rename(new, boot / "grub" / "grub.cfg")


def sample_initramfs(size: int) -> bytes:
    """A stand-in initramfs: an uncompressed cpio archive (newc, as the kernel unpacks it) of an
    ``/init`` and ``size`` random bytes, so that bootwatch's format check finds an initramfs, as
    it would on a real host, instead of calling the entries BROKEN."""
    out = bytearray()
    members = [("init", 0o100755, b"#!/bin/sh\nexec /bin/sh\n"), ("demo.bin", 0o100644, os.urandom(size)),
               ("TRAILER!!!", 0, b"")]
    for ino, (name, mode, data) in enumerate(members, 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += b"070701" + b"".join(b"%08X" % field for field in fields) + encoded
        out += bytes(-len(out) % 4) + data
        out += bytes(-len(out) % 4)
    return bytes(out)


def _install_kernel(boot: Path, version: str) -> None:
    _write(boot / f"vmlinuz-{version}", os.urandom(256 * 1024))
    _write(boot / f"initrd.img-{version}", sample_initramfs(128 * 1024))


def _bootwatch(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bootwatch", "--config", str(config), *args], check=False,
                          capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "BOOTWATCH_CONFIG"})


def _print_indented(result: subprocess.CompletedProcess[str]) -> None:
    for line in (result.stdout + result.stderr).splitlines():
        print(f"   {line}".rstrip())


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


def next_steps(unit_dirs: tuple[Path, ...] = UNIT_DIRS) -> str:
    """What to do on this host after the demo: what is true here, whether or not the service's
    unit is installed (the pip route installs none)."""
    first = "On this host: 'bootwatch entries' lists its boot entries."
    if any(os.path.lexists(d / "bootwatch.service") for d in unit_dirs):
        return (f"{first} The bootwatch service is installed: 'bootwatch status' says whether it runs,\n"
                "'journalctl -u bootwatch -f' shows what it does.")
    return (f"{first} The bootwatch service is not installed here: 'bootwatch run' runs the\n"
            "daemon in the foreground; to run it as a service, install the package or the unit in\n"
            "contrib/systemd (see the README).")


def run_demo(keep: bool = False) -> int:
    # Each line as it is printed: a reader of a pipe (| tee) follows the scenes as they happen, and
    # lines on stdout and stderr keep their order on a terminal or a shared pipe (2>&1).
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True)
    root = Path(tempfile.mkdtemp(prefix="bootwatch-demo."))
    boot, cache = root / "boot", root / "cache"
    boot.mkdir()
    config = root / "bootwatch.toml"
    config.write_text(f'[paths]\nboot = "{boot}"\ncache = "{cache}"\nruntime = "{root / "run"}"\n\n'
                      f'[watch]\nsettle = "{SETTLE}"\n')
    try:
        versions: tuple[str, ...] = ("6.1.0-1", "6.1.0-2")
        for version in versions:
            _install_kernel(boot, version)
        _update_grub(boot, versions)
        print(f"A throw-away /boot in {boot}, laid out as on a Debian 12 host: GRUB, no BLS entries.\n"
              "Two kernels, and a SAMPLE grub.cfg (not this host's) as Debian's update-grub writes it, with a\n"
              f"fallback entry pinned to {PINNED} in /etc/grub.d/40_custom. The kernels are stand-ins (random\n"
              "bytes), so bootwatch cannot tell whether the entries would boot: it says UNKNOWN, and why.")
        for line in sorted(str(p.relative_to(root)) for p in boot.rglob("*") if p.is_file()):
            print(f"   {line}")
        print(f"\n== What bootwatch sees there\n   $ bootwatch entries --boot-dir {boot}")
        _print_indented(_bootwatch(config, "entries"))
        with _daemon(config) as tail:
            if not _wait(lambda: (cache / "cacheindex.json").exists()):
                print("the daemon did not start; its log:\n" + "\n".join(tail.take()), file=sys.stderr)
                return 1
            _show("bootwatch starts: it caches every image a boot entry names", tail)

            versions += ("6.1.0-3",)
            _install_kernel(boot, "6.1.0-3")
            _update_grub(boot, versions)
            _show("A kernel is installed (images renamed into place, then update-grub lists it)", tail)

            print(f"\n== The package manager removes kernel {PINNED}, and update-grub drops its entries...")
            versions = versions[1:]
            (boot / f"vmlinuz-{PINNED}").unlink()
            (boot / f"initrd.img-{PINNED}").unlink()
            _update_grub(boot, versions)
            _show("...but the pinned fallback entry still needs it, so bootwatch puts it back", tail, settle=1.5)
            restored = (boot / f"vmlinuz-{PINNED}").exists() and (boot / f".vmlinuz-{PINNED}.boomrestored").exists()
            print(f"   /boot/vmlinuz-{PINNED} is back: {restored} (with boom's .boomrestored marker)")

            image = next(p for p in cache.glob("*.img"))
            with open(image, "r+b") as f:
                f.write(b"bit rot")
            _show(f"A cached image rots ({image.name[:12]}... overwritten in place)", tail, settle=1.5)

        print("\n== What the cache holds now (bootwatch list):")
        _print_indented(_bootwatch(config, "list"))
        print(f"\n{next_steps()}")
        if keep:
            print(f"\nKept {root} (run 'rm -r {root}' when done).")
        return 0
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
