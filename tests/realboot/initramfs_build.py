"""Real initramfs images for the boot proof's tests: Debian's mkinitramfs, and a small busybox one.

``mkinitramfs_image(deb)``: the initramfs Debian's own ``mkinitramfs`` (initramfs-tools, as the
host has it configured: ``MODULES=most``, zstd) makes for a kernel package, built by
``mkinitramfs-chroot.sh`` in a private mount namespace (root only) and cached in
``/var/cache/bootwatch-tests/initramfs/`` by package file name, initramfs-tools version and the
modules added to its ``modules`` list.

``busybox_initramfs(out, init)``: a gzip'd newc cpio with the static busybox (package
``busybox-static``) as ``/bin/busybox`` and ``init`` as ``/init``, plus ``extra`` files.

``dracut_fips_files()``: dracut's real ``01fips`` module files (from Debian's ``dracut-core``
package, downloaded once into the cache's ``debs/``), by the names dracut installs them under
in an initramfs (``inst_hook``: ``lib/dracut/hooks/<hook>/01-<script>``; ``inst_script``:
``sbin/fips.sh``), for a busybox image that holds dracut's FIPS check.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from realboot.grub_mkconfig import CACHE_DIR, Unavailable, _download, _locked

SCRIPT = Path(__file__).with_name("mkinitramfs-chroot.sh")
BUSYBOX = Path("/bin/busybox")
INSTALL_HINT = "apt-get install -y --no-install-recommends initramfs-tools busybox-static"


def _dpkg_version(package: str) -> str | None:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                          check=False)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def mkinitramfs_image(deb: Path, modules: tuple[str, ...] = (), cache_dir: Path = CACHE_DIR) -> Path:
    """``modules``: added to the configuration's ``modules`` list (loaded by /init with modprobe)."""
    if os.geteuid() != 0:
        raise Unavailable("mkinitramfs in a chroot needs root")
    tools = _dpkg_version("initramfs-tools")
    if tools is None or shutil.which("mkinitramfs") is None or shutil.which("unshare") is None:
        raise Unavailable(f"initramfs-tools is not installed ({INSTALL_HINT})")
    directory = cache_dir / "initramfs"
    directory.mkdir(parents=True, exist_ok=True)
    listed = "".join(f"+{m}" for m in modules)
    final = directory / f"{deb.stem}_initramfs-tools-{tools}{listed}.img"
    with _locked(directory / ".lock"):
        if final.exists():
            return final
        work = directory / ".work"
        work.mkdir(exist_ok=True)
        partial = directory / ".building.img"
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", str(SCRIPT), str(deb), str(partial),
                               str(work)], capture_output=True, text=True, check=False, timeout=600,
                              env={**os.environ, "MODULES": " ".join(modules)})
        if proc.returncode != 0:
            raise RuntimeError(f"mkinitramfs-chroot.sh failed ({proc.returncode}): {proc.stderr[-2000:]}")
        partial.rename(final)
    return final


DRACUT_FIPS = {"fips-boot.sh": "lib/dracut/hooks/pre-mount/01-fips-boot.sh",
               "fips-noboot.sh": "lib/dracut/hooks/pre-pivot/01-fips-noboot.sh",
               "fips-load-crypto.sh": "lib/dracut/hooks/pre-udev/01-fips-load-crypto.sh",
               "fips.sh": "sbin/fips.sh"}
"""dracut 059's ``modules.d/01fips/module-setup.sh`` install(): each script and its place."""


def dracut_fips_files(cache_dir: Path = CACHE_DIR) -> dict[str, bytes]:
    """dracut's fips module scripts, by their names in an initramfs (see the module docstring)."""
    debs = cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / ".debs.lock"):
        if not list(debs.glob("dracut-core_*.deb")):
            _download(["dracut-core"], debs)
        deb = sorted(debs.glob("dracut-core_*.deb"))[-1]
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    module = "./usr/lib/dracut/modules.d/01fips/"
    files = {}
    for name, place in DRACUT_FIPS.items():
        proc = subprocess.run(["tar", "-x", "-O", "-f", "-", module + name], input=listing, capture_output=True,
                              check=False)
        if proc.returncode != 0:
            raise Unavailable(f"{deb}: no {module}{name} ({proc.stderr.decode(errors='replace').strip()})")
        files[place] = proc.stdout
    return files


def static_busybox() -> Path:
    """The static busybox (``busybox-static``); Unavailable for the dynamically linked ``busybox``."""
    if not BUSYBOX.exists():
        raise Unavailable(f"busybox is not installed ({INSTALL_HINT})")
    with open(BUSYBOX, "rb") as f:
        head = f.read(4096)
    # ELF64: an interpreter program header (PT_INTERP, type 3) means dynamically linked.
    phoff = int.from_bytes(head[0x20:0x28], "little")
    phentsize = int.from_bytes(head[0x36:0x38], "little")
    phnum = int.from_bytes(head[0x38:0x3A], "little")
    for i in range(phnum):
        start = phoff + i * phentsize
        if int.from_bytes(head[start:start + 4], "little") == 3:
            raise Unavailable(f"{BUSYBOX} is dynamically linked ({INSTALL_HINT})")
    return BUSYBOX


def busybox_initramfs(out: Path, init: str, extra: Mapping[str, bytes] | None = None) -> Path:
    """A gzip'd newc cpio: /init (``init``, a busybox sh script), /bin/busybox, and ``extra``."""
    tree = out.with_name(out.name + ".tree")
    shutil.rmtree(tree, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys"):
        (tree / d).mkdir(parents=True)
    shutil.copy2(static_busybox(), tree / "bin" / "busybox")
    (tree / "init").write_text(init)
    (tree / "init").chmod(0o755)
    for name, data in (extra or {}).items():
        path = tree / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    names = "\n".join(str(p.relative_to(tree)) for p in sorted(tree.rglob("*"))) + "\n"
    proc = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "--owner=0:0"], cwd=tree, input=names.encode(),
                          capture_output=True, check=True)
    out.write_bytes(gzip.compress(proc.stdout, compresslevel=1))
    shutil.rmtree(tree)
    return out
