"""``bootwatch prove`` with the real qemu-system-x86_64, a real Debian cloud kernel and real initramfs images.

The kernel is Debian 12's newest ``linux-image-*-cloud-amd64`` (tests/realboot caches the
package); the initramfs images are made by Debian's own mkinitramfs for it (with ``crc7`` in its
``modules`` list, which its /init loads) and small busybox ones whose /init loads modules of that
kernel with insmod. Every proof runs as ``bootwatch prove`` in a subprocess, with the default
acceleration (KVM where it works, else TCG) and a time bound each.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, run_bootwatch, subprocess_env
from realboot.grub_mkconfig import Kernel, Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import busybox_initramfs, mkinitramfs_image, static_busybox

QEMU = "qemu-system-x86_64"
OPTIONS = "root=UUID=0b5c1d1e-7f1c-4c55-9d2f-1f0c9a7d3e11 ro quiet"
TIMEOUT = "90"  # each VM's bound: a TCG boot of this pair takes under 10 s here


@pytest.fixture(scope="module")
def kernel_deb() -> tuple[Path, Kernel]:
    try:
        deb = kernel_debs(1)[0]
    except Unavailable as e:
        pytest.skip(f"no Debian kernel package: {e}")
    return deb, extracted_kernel(deb)


@pytest.fixture(scope="module")
def mkinitramfs_img(kernel_deb: tuple[Path, Kernel]) -> Path:
    try:
        return mkinitramfs_image(kernel_deb[0], ("crc7",))
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def modules(kernel_deb: tuple[Path, Kernel], tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """``llc.ko`` and ``stp.ko`` of the kernel (stp needs llc's symbols)."""
    deb, kernel = kernel_deb
    out = tmp_path_factory.mktemp("modules")
    base = f"./lib/modules/{kernel.version}/kernel/net"
    tar = subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar -x -C {out} {base}/llc/llc.ko {base}/802/stp.ko",
                         shell=True, capture_output=True, text=True, check=False)
    assert tar.returncode == 0, tar.stderr
    return {name: next(out.rglob(name)).read_bytes() for name in ("llc.ko", "stp.ko")}


def needs_qemu() -> None:
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (apt-get install qemu-system-x86)")


def add_entry(boot: Path, name: str, kernel: Path, initrds: Sequence[Path], options: str = OPTIONS) -> None:
    """A BLS entry ``name.conf`` with copies of ``kernel`` and ``initrds`` in the boot directory."""
    shutil.copyfile(kernel, boot / f"vmlinuz-{name}")
    lines = [f"title {name}", f"linux /vmlinuz-{name}"]
    for i, initrd in enumerate(initrds):
        shutil.copyfile(initrd, boot / f"initrd-{name}-{i}.img")
        lines.append(f"initrd /initrd-{name}-{i}.img")
    lines.append(f"options {options}")
    (boot / "loader" / "entries" / f"{name}.conf").write_text("\n".join(lines) + "\n")


@pytest.fixture
def tree(tmp_path: Path, bootwatch_config: Path) -> Path:
    (tmp_path / "boot" / "loader" / "entries").mkdir(parents=True)
    return tmp_path


def prove(tree: Path, *args: str, env: dict[str, str] | None = None,
          timeout: float = 400) -> tuple[int, list[dict[str, Any]], str]:
    rc, out, err = run_bootwatch(tree / "boot", tree / "cache", "prove", "--json", "--timeout", TIMEOUT, *args,
                                 env={"RUNTIME_DIRECTORY": str(tree / "run"), **(env or {})}, timeout=timeout)
    assert "Traceback" not in err, err
    return rc, json.loads(out) if out.strip() else [], err


def by_entry(proofs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["entry"]: p for p in proofs}


def corrupt(src: Path, dst: Path) -> Path:
    """A copy of ``src`` with 4 KiB in its middle inverted (the size, and so the header's check, unchanged)."""
    data = bytearray(src.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.slow
@pytest.mark.root
def test_mkinitramfs_pair_passes_and_is_stored(tree: Path, kernel_deb: tuple[Path, Kernel],
                                               mkinitramfs_img: Path) -> None:
    needs_qemu()
    _, kernel = kernel_deb
    add_entry(tree / "boot", "debian", kernel.boot / f"vmlinuz-{kernel.version}", [mkinitramfs_img])
    rc, proofs, err = prove(tree, "debian.conf")
    assert rc == 0, (proofs, err)
    (proof,) = proofs
    assert proof["verdict"] == "passed", proof
    assert proof["accel"] in ("kvm", "tcg")
    assert any("Run /init as init process" in line for line in proof["evidence"])
    assert "root=UUID" not in proof["cmdline"] and "console=ttyS0" in proof["cmdline"]
    stored = tree / "run" / "proofs" / "bls-debian.conf.json"
    assert json.loads(stored.read_text())["verdict"] == "passed"
    log = Path(proof["log"]).read_text()
    # The proof may end when the console has been quiet for a while after /init (a loaded machine
    # under TCG can be silent that long before initramfs-tools reaches its break point): the log
    # holds the whole console up to the end of the proof, so /init's start is in it.
    assert "Run /init as init process" in log


@pytest.mark.slow
@pytest.mark.root
def test_an_initramfs_for_the_other_kernel_fails(tree: Path, kernel_deb: tuple[Path, Kernel]) -> None:
    """mkinitramfs's image for the older kernel package, booted with the newer kernel: its /init
    would run (and load no module, quietly): the proof fails on the modules directories."""
    try:
        newer, older = kernel_debs(2)
        image = mkinitramfs_image(older, ("crc7",))
    except Unavailable as e:
        pytest.skip(str(e))
    kernel = extracted_kernel(newer)
    add_entry(tree / "boot", "mismatch", kernel.boot / f"vmlinuz-{kernel.version}", [image])
    rc, proofs, err = prove(tree, "mismatch.conf")
    assert rc == 1, err
    (proof,) = proofs
    older_release = extracted_kernel(older).version
    assert proof["verdict"] == "failed"
    assert proof["reason"] == f"the initramfs holds no modules for the kernel's release {kernel.version}"
    assert proof["evidence"][1] == f"initramfs modules: lib/modules/{older_release}"


@pytest.mark.slow
@pytest.mark.root
def test_truncated_initramfs_and_corrupted_kernel_fail(tree: Path, kernel_deb: tuple[Path, Kernel],
                                                       mkinitramfs_img: Path) -> None:
    needs_qemu()
    _, kernel = kernel_deb
    vmlinuz = kernel.boot / f"vmlinuz-{kernel.version}"
    truncated = tree / "truncated.img"
    truncated.write_bytes(mkinitramfs_img.read_bytes()[:mkinitramfs_img.stat().st_size // 2])
    add_entry(tree / "boot", "truncated", vmlinuz, [truncated])
    add_entry(tree / "boot", "corrupt", corrupt(vmlinuz, tree / "vmlinuz-corrupt"), [mkinitramfs_img])
    rc, proofs, err = prove(tree, "truncated.conf", "corrupt.conf")
    assert rc == 1
    assert "2 of 2 proofs failed: truncated.conf, corrupt.conf" in err
    results = by_entry(proofs)
    trunc, bad = results["truncated.conf"], results["corrupt.conf"]
    assert trunc["verdict"] == bad["verdict"] == "failed"
    assert trunc["reason"].startswith("the initramfs could not be unpacked"), trunc
    assert any("Initramfs unpacking failed" in line for line in trunc["evidence"])
    assert bad["reason"] == "the kernel image could not be decompressed", bad
    assert any("System halted" in line or "Decoding failed" in line for line in bad["evidence"])
    # Both decided by what the console said, not by the time bound.
    assert "within" not in trunc["reason"] + bad["reason"]


BUSYBOX_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
{insmods}
/bin/busybox echo "bootwatch-test: init done"
/bin/busybox poweroff -f
"""


@pytest.mark.slow
def test_busybox_initramfs_loading_modules_passes_and_a_missing_dependency_fails(
        tree: Path, kernel_deb: tuple[Path, Kernel], modules: dict[str, bytes]) -> None:
    needs_qemu()
    try:
        static_busybox()
    except Unavailable as e:
        pytest.skip(str(e))
    _, kernel = kernel_deb
    vmlinuz = kernel.boot / f"vmlinuz-{kernel.version}"
    good = busybox_initramfs(tree / "good.img", BUSYBOX_INIT.format(
        insmods="/bin/busybox insmod /llc.ko\n/bin/busybox insmod /stp.ko\n/bin/busybox grep -w stp /proc/modules"),
        modules)
    missing = busybox_initramfs(tree / "missing.img", BUSYBOX_INIT.format(insmods="/bin/busybox insmod /stp.ko"),
                                {"stp.ko": modules["stp.ko"]})
    add_entry(tree / "boot", "busybox", vmlinuz, [good])
    add_entry(tree / "boot", "nodep", vmlinuz, [missing])
    rc, proofs, err = prove(tree, "busybox.conf", "nodep.conf")
    assert rc == 1, (proofs, err)
    results = by_entry(proofs)
    assert results["busybox.conf"]["verdict"] == "passed", results["busybox.conf"]
    log = Path(results["busybox.conf"]["log"]).read_text()
    assert "stp " in log and "bootwatch-test: init done" in log  # /proc/modules lists it: loaded
    nodep = results["nodep.conf"]
    assert nodep["verdict"] == "failed" and nodep["reason"] == "a module could not be loaded", nodep
    assert any("Unknown symbol" in line for line in nodep["evidence"])


@pytest.mark.slow
def test_several_initrds_are_loaded_as_one_chain(tree: Path, kernel_deb: tuple[Path, Kernel],
                                                 modules: dict[str, bytes]) -> None:
    """Two images (the second holding /init) passed as a loader would: concatenated in order."""
    needs_qemu()
    try:
        static_busybox()
    except Unavailable as e:
        pytest.skip(str(e))
    _, kernel = kernel_deb
    first = busybox_initramfs(tree / "first.img", "#!/bin/busybox sh\nexit 1\n", {"llc.ko": modules["llc.ko"]})
    second = busybox_initramfs(tree / "second.img", BUSYBOX_INIT.format(
        insmods="/bin/busybox insmod /llc.ko\n/bin/busybox insmod /stp.ko"), {"stp.ko": modules["stp.ko"]})
    add_entry(tree / "boot", "chain", kernel.boot / f"vmlinuz-{kernel.version}", [first, second])
    rc, proofs, err = prove(tree, "chain.conf")
    assert rc == 0 and proofs[0]["verdict"] == "passed", (proofs, err)
    assert len(proofs[0]["initrds"]) == 2


@pytest.mark.slow
def test_a_unified_kernel_image_is_proved_from_its_sections(tree: Path, kernel_deb: tuple[Path, Kernel],
                                                           modules: dict[str, bytes]) -> None:
    """A UKI (Debian's systemd-boot stub with the cloud kernel, a busybox initramfs and a
    .cmdline) in <boot>/EFI/Linux: its .linux, .initrd and .cmdline are what the VM boots."""
    from realboot.uki_build import build_uki, missing_tool
    needs_qemu()
    if missing_tool() is not None:
        pytest.skip(str(missing_tool()))
    try:
        static_busybox()
    except Unavailable as e:
        pytest.skip(str(e))
    _, kernel = kernel_deb
    initrd = busybox_initramfs(tree / "uki-initrd.img", BUSYBOX_INIT.format(
        insmods="/bin/busybox insmod /llc.ko\n/bin/busybox insmod /stp.ko\n/bin/busybox cat /proc/cmdline"), modules)
    (tree / "boot" / "EFI" / "Linux").mkdir(parents=True)
    build_uki(tree / "boot" / "EFI" / "Linux" / "debian.efi", kernel=kernel.boot / f"vmlinuz-{kernel.version}",
              initrd=initrd, osrel=b'NAME="Debian GNU/Linux"\nID=debian\nVERSION_ID="12"\n',
              cmdline=b"root=UUID=0b5c ro bootwatch.test=uki", uname=kernel.version.encode())
    rc, proofs, err = prove(tree, "uki:debian.efi")
    assert rc == 0, (proofs, err)
    (proof,) = proofs
    assert proof["verdict"] == "passed", proof
    uki = tree / "boot" / "EFI" / "Linux" / "debian.efi"
    assert proof["kernel"] == f"{uki}:.linux" and proof["initrds"] == [f"{uki}:.initrd"]
    log = Path(proof["log"]).read_text()
    assert "bootwatch.test=uki" in log and "root=/dev/nonexistent" in log and "root=UUID" not in log.split(
        "Run /init as init process")[1]


def test_the_kernel_release_is_read_from_the_setup_header(kernel_deb: tuple[Path, Kernel]) -> None:
    from bootwatch.verify.kernel import bzimage_release
    _, kernel = kernel_deb
    with open(kernel.boot / f"vmlinuz-{kernel.version}", "rb") as f:
        assert bzimage_release(f, f.read(4096)) == kernel.version


def test_without_qemu_the_proof_is_not_run(tree: Path, kernel_deb: tuple[Path, Kernel]) -> None:
    _, kernel = kernel_deb
    initrd = tree / "initrd.img"
    initrd.write_bytes(b"070701" + b"0" * 104)
    add_entry(tree / "boot", "debian", kernel.boot / f"vmlinuz-{kernel.version}", [initrd])
    empty = tree / "empty-path"
    empty.mkdir()
    rc, out, err = run_bootwatch(tree / "boot", tree / "cache", "prove", "debian.conf",
                                 env={"RUNTIME_DIRECTORY": str(tree / "run"), "PATH": str(empty)})
    assert rc == 0, err
    assert out.startswith("NOT RUN: debian.conf (bls): qemu-system-x86_64 is not installed"), out
    stored = json.loads((tree / "run" / "proofs" / "bls-debian.conf.json").read_text())
    assert stored["verdict"] == "not run" and stored["log"] is None


def test_a_non_x86_kernel_is_not_run(tree: Path) -> None:
    image = bytearray(4096)
    image[0x38:0x3C] = b"ARM\x64"  # the arm64 Image header's magic (Documentation/arch/arm64/booting.rst)
    arm = tree / "Image"
    arm.write_bytes(bytes(image))
    add_entry(tree / "boot", "arm", arm, [])
    rc, proofs, err = prove(tree, "--all")
    assert rc == 0, err
    assert proofs[0]["verdict"] == "not run"
    assert proofs[0]["reason"].endswith("not an x86 kernel (bzImage): arm64 Image"), proofs


def test_all_with_an_unreadable_source_proves_the_rest_and_exits_1(tree: Path) -> None:
    image = bytearray(4096)
    image[0x38:0x3C] = b"ARM\x64"
    (tree / "Image").write_bytes(bytes(image))
    add_entry(tree / "boot", "arm", tree / "Image", [])
    (tree / "boot" / "grub").mkdir()
    os.mkfifo(tree / "boot" / "grub" / "grub.cfg")  # never opened for long: nothing blocks
    rc, proofs, err = prove(tree, "--all", timeout=30)
    assert rc == 1
    assert [p["verdict"] for p in proofs] == ["not run"]
    assert f"not every entry could be proved: {tree / 'boot' / 'grub' / 'grub.cfg'}" in err


def test_unknown_entry_is_a_usage_error(tree: Path) -> None:
    rc, proofs, err = prove(tree, "nope.conf")
    assert rc == 2 and proofs == []
    assert "no boot entry 'nope.conf'" in err


# -- the VM dies with bootwatch ------------------------------------------------------------------

TICKING_INIT = """#!/bin/busybox sh
while :; do /bin/busybox echo tick; /bin/busybox sleep 1; done
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _vms_using(tree: Path) -> list[int]:
    """qemu processes (no zombies) with a file of ``tree`` open: the VMs started for it, wherever
    they were reparented."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not _alive(int(entry)):
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != "qemu-system-x86":
                continue
            links = [os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")]
        except OSError:
            continue
        if any(link.startswith(f"{tree}/") for link in links):
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    """The process exists and is no zombie (a zombie has released everything, the VM is gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _start_ticking_proof(tree: Path, kernel: Kernel) -> tuple[subprocess.Popen[str], int]:
    needs_qemu()
    try:
        static_busybox()
    except Unavailable as e:
        pytest.skip(str(e))
    add_entry(tree / "boot", "ticking", kernel.boot / f"vmlinuz-{kernel.version}",
              [busybox_initramfs(tree / "ticking.img", TICKING_INIT)])
    argv = [sys.executable, "-m", "bootwatch", "--boot-dir", str(tree / "boot"), "--cache-dir", str(tree / "cache"),
            "prove", "--accel", "tcg", "--timeout", "600", "ticking.conf"]
    proc = subprocess.Popen(argv, env=subprocess_env(None, {"RUNTIME_DIRECTORY": str(tree / "run")}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        vms = [c for c in _children(proc.pid) if Path(f"/proc/{c}/comm").read_text().strip() == "qemu-system-x86"]
        if vms:
            return proc, vms[0]
        if proc.poll() is not None:
            raise AssertionError(proc.communicate())
        time.sleep(0.1)
    proc.kill()
    proc.communicate()
    raise AssertionError("no qemu process within 60 s")


@pytest.mark.slow
def test_the_vm_dies_when_bootwatch_is_killed(tree: Path, kernel_deb: tuple[Path, Kernel]) -> None:
    proc, vm = _start_ticking_proof(tree, kernel_deb[1])
    time.sleep(1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    deadline = time.monotonic() + 10
    while _vms_using(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _vms_using(tree)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "qemu outlived the bootwatch that started it"


@pytest.mark.slow
def test_sigterm_kills_and_reaps_the_vm(tree: Path, kernel_deb: tuple[Path, Kernel]) -> None:
    proc, vm = _start_ticking_proof(tree, kernel_deb[1])
    time.sleep(1)
    assert _vms_using(tree) == [vm]
    os.kill(proc.pid, signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert not os.path.exists(f"/proc/{vm}")  # killed and reaped before bootwatch exited
    assert _vms_using(tree) == []
