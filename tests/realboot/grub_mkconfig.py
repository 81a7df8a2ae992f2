"""grub.cfg files written by the real ``grub-mkconfig``, for real Debian kernel packages.

See README.md beside this file for how grub-mkconfig is made to run on loop devices. The kernel
packages (``linux-image-*-cloud-amd64``) are downloaded once with ``apt-get download`` into
``$BOOTWATCH_TEST_CACHE/debs`` (default ``/var/cache/bootwatch-tests``) and their ``/boot`` files
extracted with ``dpkg-deb -x`` into ``kernels/<version>``; later runs use the cache.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path(os.environ.get("BOOTWATCH_TEST_CACHE", "/var/cache/bootwatch-tests"))
SCRIPT = Path(__file__).with_name("mkconfig-chroot.sh")
REQUIRED_TOOLS = ("grub-mkconfig", "grub-probe", "unshare", "losetup", "mkfs.ext4", "blkid", "chroot",
                  "dpkg-deb", "apt-get", "apt-cache", "cpio", "gzip")
INSTALL_HINT = "apt-get install -y --no-install-recommends grub2-common grub-pc-bin"
CLOUD = "cloud-amd64"
XEN_DOM0 = "amd64"
"""The cloud kernels are small; the generic ones have CONFIG_XEN_DOM0, which 20_linux_xen needs."""
READY = ".ready"


class Unavailable(Exception):
    """The real generator cannot run here; the message says why (the tests skip with it)."""


class Layout(enum.Enum):
    SEPARATE_BOOT = "separate-boot"
    """/boot is its own ext4 filesystem: GRUB paths start at its root (/vmlinuz-V)."""
    BOOT_ON_ROOT = "boot-on-root"
    """/boot is a directory of the root filesystem: GRUB paths carry /boot/ (/boot/vmlinuz-V)."""


@dataclass(frozen=True)
class Kernel:
    version: str
    boot: Path
    """The package's /boot files: vmlinuz-V, config-V, System.map-V."""


@dataclass(frozen=True)
class GeneratedGrub:
    layout: Layout
    grub_cfg: Path
    root_uuid: str
    boot_uuid: str
    """The filesystem holding /boot: the root filesystem's UUID for BOOT_ON_ROOT."""
    kernels: tuple[Kernel, ...]
    files: dict[str, frozenset[str]]
    """For each filesystem UUID, the regular files on it, as paths from its root."""
    output: str
    """What grub-mkconfig printed ("Found linux image: ...")."""


def missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices, mounts, chroot)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed ({INSTALL_HINT})"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control"
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _package_pattern(flavour: str) -> re.Pattern[str]:
    return re.compile(rf"linux-image-(\d+)\.(\d+)\.(\d+)-(\d+)-{re.escape(flavour)}")


def _version_key(name: str) -> tuple[int, ...]:
    match = re.search(r"-(\d+)\.(\d+)\.(\d+)-(\d+)-", name)
    return tuple(int(g) for g in match.groups()) if match else ()


def _download(packages: list[str], debs: Path) -> None:
    try:
        _run(["apt-get", "download", "-o", "APT::Sandbox::User=root", *packages], cwd=debs, timeout=600)
    except RuntimeError as e:
        raise Unavailable(f"apt-get download {' '.join(packages)}: {e}") from None


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def kernel_debs(count: int = 2, flavour: str = CLOUD, cache_dir: Path = CACHE_DIR) -> list[Path]:
    """``count`` kernel packages of ``flavour``, newest first: the cached ones, or downloaded with apt-get."""
    debs = cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    pattern = _package_pattern(flavour)

    def cached() -> list[Path]:
        found = [p for p in debs.glob("linux-image-*.deb") if pattern.fullmatch(p.name.split("_")[0])]
        return sorted(found, key=lambda p: _version_key(p.name), reverse=True)[:count]

    with _locked(cache_dir / ".debs.lock"):
        if len(cached()) >= count:
            return cached()
        names = _run(["apt-cache", "pkgnames", "linux-image-"]).stdout.split()
        packages = sorted((n for n in names if pattern.fullmatch(n)), key=_version_key, reverse=True)[:count]
        if len(packages) < count:
            raise Unavailable(f"apt knows {len(packages)} linux-image-*-{flavour} packages, {count} are needed "
                              "(run apt-get update)")
        _download(packages, debs)
        return cached()


def xen_deb(cache_dir: Path = CACHE_DIR) -> Path:
    """Debian's newest Xen hypervisor package (``xen-hypervisor-*-amd64``), cached as the kernels are."""
    debs = cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / ".debs.lock"):
        found = sorted(debs.glob("xen-hypervisor-*-amd64_*.deb"))
        if found:
            return found[-1]
        names = _run(["apt-cache", "pkgnames", "xen-hypervisor-"]).stdout.split()
        packages = sorted(n for n in names if re.fullmatch(r"xen-hypervisor-[\d.]+-amd64", n))
        if not packages:
            raise Unavailable("apt knows no xen-hypervisor-*-amd64 package (run apt-get update)")
        _download(packages[-1:], debs)
        return sorted(debs.glob("xen-hypervisor-*-amd64_*.deb"))[-1]


def extracted_kernel(deb: Path, cache_dir: Path = CACHE_DIR) -> Kernel:
    """The /boot files of a kernel package, extracted once with ``dpkg-deb -x``."""
    package = _run(["dpkg-deb", "-f", str(deb), "Package"]).stdout.strip()
    return Kernel(package[len("linux-image-"):], extracted_boot(deb, cache_dir))


def extracted_boot(deb: Path, cache_dir: Path = CACHE_DIR) -> Path:
    """The /boot directory of a package, extracted once with ``dpkg-deb -x`` into ``kernels/<package>``."""
    package = _run(["dpkg-deb", "-f", str(deb), "Package"]).stdout.strip()
    version = package[len("linux-image-"):] if package.startswith("linux-image-") else package
    final = cache_dir / "kernels" / version
    if (final / READY).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f".kernel-{version}.lock"):
        if not (final / READY).exists():
            building = final.with_name(f".{version}.building")
            shutil.rmtree(building, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
            _run(["dpkg-deb", "-x", str(deb), str(building)])
            (building / "boot").rename(final)
            (final / READY).touch()
            shutil.rmtree(building)
    return final


def cached_kernels(count: int = 2, flavour: str = CLOUD) -> tuple[Kernel, ...]:
    reason = missing_prerequisite()
    if reason is not None:
        raise Unavailable(reason)
    return tuple(extracted_kernel(deb) for deb in kernel_debs(count, flavour))


def cached_xen() -> Path:
    """A directory with the Xen hypervisor package's /boot files (``xen-<v>-amd64.gz``, ``.efi``, ``.config``)."""
    reason = missing_prerequisite()
    if reason is not None:
        raise Unavailable(reason)
    return extracted_boot(xen_deb())


def _cpio(tree: Path, out: Path, *, gzip: bool) -> None:
    names = "\n".join(str(p.relative_to(tree)) for p in sorted(tree.rglob("*"))) + "\n"
    archive = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], input=names.encode(), cwd=tree,
                             capture_output=True, check=True).stdout
    if gzip:
        archive = subprocess.run(["gzip", "-n", "-c"], input=archive, capture_output=True, check=True).stdout
    out.write_bytes(archive)


def _payload(kernels: tuple[Kernel, ...], directory: Path, xen: Path | None) -> Path:
    """What goes into /boot: each kernel's files, an initramfs for it (a gzip'd newc cpio holding
    its lib/modules/V, which is what update-initramfs would add) and AMD early microcode, the
    ``amd-ucode.img`` 10_linux puts first on the initrd line (GRUB_EARLY_INITRD_LINUX_STOCK)."""
    payload = directory / "payload"
    payload.mkdir()
    for kernel in kernels:
        for name in (f"vmlinuz-{kernel.version}", f"config-{kernel.version}", f"System.map-{kernel.version}"):
            shutil.copyfile(kernel.boot / name, payload / name)
        tree = directory / f"initramfs-{kernel.version}"
        (tree / "usr" / "lib" / "modules" / kernel.version).mkdir(parents=True)
        (tree / "init").write_text("#!/bin/sh\n")
        _cpio(tree, payload / f"initrd.img-{kernel.version}", gzip=True)
    ucode = directory / "ucode"
    (ucode / "kernel" / "x86" / "microcode").mkdir(parents=True)
    (ucode / "kernel" / "x86" / "microcode" / "AuthenticAMD.bin").write_bytes(b"")
    _cpio(ucode, payload / "amd-ucode.img", gzip=False)
    if xen is not None:
        for file in xen.glob("xen-*"):
            shutil.copyfile(file, payload / file.name)
    return payload


@contextlib.contextmanager
def _loop(image: Path) -> Iterator[str]:
    device = _run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def _filesystem(path: Path, size_mib: int) -> str:
    fs_uuid = str(uuid.uuid4())
    with path.open("wb") as f:
        f.truncate(size_mib << 20)
    _run(["mkfs.ext4", "-q", "-F", "-U", fs_uuid, str(path)])
    return fs_uuid


def run_grub_mkconfig(layout: Layout, kernels: tuple[Kernel, ...], workdir: Path, *,
                      extra_default: str = "", device_map: bool = False, xen: Path | None = None) -> GeneratedGrub:
    """Run the real grub-mkconfig for ``layout`` and return what it wrote.

    ``extra_default`` is appended to Debian's default /etc/default/grub (GRUB's
    /usr/share/grub/default/grub). ``device_map`` writes a /boot/grub/device.map naming the
    devices (hd0, hd1), so that grub-probe gives hints and 10_linux writes ``--hint-*`` options.
    ``xen``: the Xen hypervisor's /boot files (:func:`cached_xen`), for 20_linux_xen's entries.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "out"
    out.mkdir()
    default = workdir / "default-grub"
    default.write_text(Path("/usr/share/grub/default/grub").read_text() + extra_default)
    device_map_file = ""
    if device_map:
        lines = ["(hd0) /dev/realboot-root"]
        if layout is Layout.SEPARATE_BOOT:
            lines.append("(hd1) /dev/realboot-boot")
        (workdir / "device.map").write_text("\n".join(lines) + "\n")
        device_map_file = str(workdir / "device.map")
    root_uuid = _filesystem(workdir / "root.img", 96)
    boot_uuid = _filesystem(workdir / "boot.img", 64) if layout is Layout.SEPARATE_BOOT else root_uuid
    payload = _payload(kernels, workdir, xen)
    (workdir / "mnt").mkdir()
    with contextlib.ExitStack() as stack:
        root_loop = stack.enter_context(_loop(workdir / "root.img"))
        boot_loop = stack.enter_context(_loop(workdir / "boot.img")) if layout is Layout.SEPARATE_BOOT else ""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "ROOT_LOOP": root_loop,
               "BOOT_LOOP": boot_loop, "MNT": str(workdir / "mnt"), "PAYLOAD": str(payload),
               "DEFAULT_GRUB": str(default), "DEVICE_MAP": device_map_file, "OUT": str(out)}
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", str(SCRIPT)], env=env,
                              capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"grub-mkconfig in {workdir} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    files = {p.name[len("files-"):-len(".txt")]: frozenset(p.read_text().splitlines())
             for p in out.glob("files-*.txt")}
    return GeneratedGrub(layout, out / "grub.cfg", root_uuid, boot_uuid, kernels, files, proc.stderr)
