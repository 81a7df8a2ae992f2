"""The real ``bootctl list`` (systemd-boot 252) as an oracle for the entry readers.

Debian 12 ships bootctl in the ``systemd-boot`` package, whose maintainer scripts install the
boot loader into the host's ESP; so the package is not installed: it is fetched once with
``apt-get download`` into the same cache as the kernels and only ``usr/bin/bootctl`` is extracted
(it links the host's ``libsystemd-shared`` of the same systemd version). bootctl insists on being
given the root of a filesystem: the trees are copied onto tmpfs mounts in a private mount
namespace, and the ESP checks are relaxed (``SYSTEMD_RELAX_ESP_CHECKS``,
``SYSTEMD_RELAX_XBOOTLDR_CHECKS``: no partition table to probe).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from realboot.grub_mkconfig import CACHE_DIR, Unavailable, _download, _locked, _run

READY = ".ready"


def cached_bootctl(cache_dir: Path = CACHE_DIR) -> Path:
    """``bootctl`` of the systemd-boot package matching the host's systemd, extracted once."""
    if os.geteuid() != 0:
        raise Unavailable("needs root (apt-get download, mounts)")
    if shutil.which("unshare") is None or shutil.which("dpkg-deb") is None:
        raise Unavailable("unshare or dpkg-deb missing")
    version = _run(["dpkg-query", "-W", "-f", "${Version}", "systemd"]).stdout.strip()
    final = cache_dir / "bootctl" / version
    debs = cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / ".debs.lock"):
        if not (final / READY).exists():
            found = [p for p in debs.glob("systemd-boot_*.deb")
                     if _run(["dpkg-deb", "-f", str(p), "Version"]).stdout.strip() == version]
            if not found:
                _download([f"systemd-boot={version}"], debs)
                found = [p for p in debs.glob("systemd-boot_*.deb")
                         if _run(["dpkg-deb", "-f", str(p), "Version"]).stdout.strip() == version]
            if not found:
                raise Unavailable(f"no systemd-boot {version} package downloaded")
            shutil.rmtree(final, ignore_errors=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            tree = final.with_name(f".{version}.building")
            shutil.rmtree(tree, ignore_errors=True)
            _run(["dpkg-deb", "-x", str(found[0]), str(tree)])
            final.mkdir(parents=True)
            shutil.copy2(tree / "usr" / "bin" / "bootctl", final / "bootctl")
            shutil.rmtree(tree)
            (final / READY).touch()
    return final / "bootctl"


def bootctl_list(bootctl: Path, workdir: Path, esp: Path, boot: Path | None = None) -> list[dict[str, Any]]:
    """What ``bootctl list --json=short`` says of an ESP tree (and an XBOOTLDR tree), one dict per entry."""
    mounts = workdir / "bootctl-mounts"
    (mounts / "esp").mkdir(parents=True)
    (mounts / "boot").mkdir()
    script = ('set -e; mount -t tmpfs bootctl-esp "$M/esp"; cp -R "$ESP/." "$M/esp/"; '
              'if [ -n "$BOOT" ]; then mount -t tmpfs bootctl-boot "$M/boot"; cp -R "$BOOT/." "$M/boot/"; '
              'set -- --boot-path="$M/boot"; else set --; fi; '
              '"$BOOTCTL" --esp-path="$M/esp" "$@" --json=short --no-pager list')
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "M": str(mounts), "ESP": str(esp),
           "BOOT": str(boot or ""), "BOOTCTL": str(bootctl), "SYSTEMD_RELAX_ESP_CHECKS": "1",
           "SYSTEMD_RELAX_XBOOTLDR_CHECKS": "1"}
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bootctl list failed ({proc.returncode}): {proc.stderr.strip()}")
    decoder, text, entries = json.JSONDecoder(), proc.stdout.strip(), []
    while text:
        entry, end = decoder.raw_decode(text)
        entries.append(entry)
        text = text[end:].lstrip()
    return entries
