"""Review of issue 14 (entry health, headroom, restore --image), as an attacker: each test is a
defect found on main, marked xfail(strict=True) until it is fixed. Real files, real kernels and
mkinitramfs images where the verdict depends on them, a real small tmpfs /boot, the real command
line as a child process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BootTree = Any  # conftest.BootTree
MIB = 1 << 20


def _entries(tree: BootTree, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    rc, out, err = tree.cli("entries", "--json", *args, env=env)
    assert "Traceback" not in err, err
    return rc, {e["id"]: e for e in json.loads(out)["entries"]} if out.strip() else {}, err


def _runtime_config(tree: BootTree) -> Path:
    runtime = tree.root / "run"
    runtime.mkdir(mode=0o755, exist_ok=True)
    tree.config.write_text(f'[paths]\nruntime = "{runtime}"\n')
    return runtime


# ------------------------------------------------------------------------------ verdicts


@pytest.mark.parametrize("content", ["empty", "zeros"])
def test_an_empty_or_zeroed_kernel_is_broken(boot_tree: BootTree, content: str) -> None:
    tree = boot_tree
    size = 0 if content == "empty" else 8 * MIB
    tree.write_file("/vmlinuz-6.1.0-9-amd64", content=b"\0" * size)
    tree.write_entry("zeroed", linux="/vmlinuz-6.1.0-9-amd64", lines=[("options", "root=/dev/vda1 ro")])
    rc, shown, err = _entries(tree, "--check")
    states = [f["state"] for f in shown["zeroed.conf"]["findings"] if f["check"] == "format"]
    assert states == ["BROKEN"], shown["zeroed.conf"]
    assert rc == 1, err


def _failed_proof(tree: BootTree) -> tuple[Path, Any]:
    """A FAILED proof of the tree's one entry, of its files as they are, stored as 'bootwatch prove' stores it."""
    from bootwatch.cache.operations import BootCache
    from bootwatch.prove.proof import Proof, ProofStore, Verdict, entry_files

    runtime = _runtime_config(tree)
    tree.write_kernel("6.1")
    tree.write_entry("one", linux="/vmlinuz-6.1", initrd=["/initramfs-6.1.img"])
    cache = BootCache(tree.boot, tree.entries, tree.cache, runtime_dir=runtime)
    inventory = cache.read_inventory()
    (entry,) = inventory.entries
    proof = Proof(entry.id, entry.source.value, Verdict.FAILED, "the kernel panicked", ("Kernel panic",),
                  files=entry_files(inventory, entry) or ())
    ProofStore(runtime).save(entry, proof, b"Kernel panic - not syncing\n")
    return ProofStore(runtime).result_path(entry), cache


def test_bootwatch_entries_shows_a_failed_proof(boot_tree: BootTree) -> None:
    from bootwatch.health.facts import FactsMemo
    from bootwatch.health.judge import check_host

    tree = boot_tree
    _, cache = _failed_proof(tree)
    (daemon_view,) = check_host(cache, cache.read_inventory(), FactsMemo(tree.root / "run")).all()
    assert [f.check.value for f in daemon_view.findings if f.state.value == "BROKEN"].count("proof") == 1
    _, shown, _ = _entries(tree)
    assert [f["check"] for f in shown["one.conf"]["findings"]].count("proof") == 1, shown["one.conf"]


def test_a_corrupted_stored_proof_is_no_exception(boot_tree: BootTree) -> None:
    from bootwatch.health.facts import FactsMemo
    from bootwatch.health.judge import check_host

    tree = boot_tree
    result, cache = _failed_proof(tree)
    data = json.loads(result.read_text())
    result.write_text(json.dumps(data).replace(json.dumps(data["started"]), "1e999", 1))
    (health,) = check_host(cache, cache.read_inventory(), FactsMemo(tree.root / "run")).all()
    assert health.state.value in ("BROKEN", "BOOTABLE")


# ------------------------------------------------------------------------------ headroom

Pair = tuple[str, Path, Path]  # release, vmlinuz, its mkinitramfs image


@pytest.fixture(scope="module")
def pairs() -> list[Pair]:
    """Two real kernels (Debian's cloud flavour, two versions) and mkinitramfs images of each."""
    from realboot.grub_mkconfig import Unavailable, extracted_kernel, kernel_debs
    from realboot.initramfs_build import mkinitramfs_image
    try:
        found = []
        for deb in kernel_debs(2):
            kernel = extracted_kernel(deb)
            found.append((kernel.version, kernel.boot / f"vmlinuz-{kernel.version}", mkinitramfs_image(deb)))
        return found
    except Unavailable as e:
        pytest.skip(str(e))


@contextlib.contextmanager
def small_boot(tree: BootTree, size: str = "64m") -> Iterator[Path]:
    """A tmpfs of ``size`` as the tree's boot directory, with its (empty) entries directory."""
    if os.geteuid() != 0:
        pytest.skip("mounts a tmpfs as /boot: needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(tree.boot)],
                   check=True, capture_output=True)
    try:
        tree.entries.mkdir(parents=True)
        yield tree.boot
    finally:
        if subprocess.run(["umount", str(tree.boot)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(tree.boot)], check=True)


@contextlib.contextmanager
def real_root(tree: BootTree, *releases: str) -> Iterator[str]:
    """A loop-mounted ext4 holding the releases' modules: root= of a good entry (tests/realboot/loop_root.py)."""
    from realboot.grub_mkconfig import Unavailable
    from realboot.loop_root import loop_root
    try:
        with loop_root(tree.root, releases) as device:
            yield device
    except Unavailable as e:
        pytest.skip(str(e))


def free(directory: Path) -> int:
    vfs = os.statvfs(directory)
    return vfs.f_bfree * vfs.f_frsize


def leave_free(tree: BootTree, wanted: int) -> None:
    """Grow the filler (a file no entry names) so that ``wanted`` bytes stay free."""
    filler = tree.boot / "filler"
    size = filler.stat().st_size if filler.exists() else 0
    new_size = size + free(tree.boot) - wanted
    assert new_size >= size, f"{tree.boot} has less than {wanted} bytes free"
    with open(filler, "ab") as f:
        f.write(b"\1" * (new_size - size))
    assert free(tree.boot) == wanted


def blocks(path: Path) -> int:
    return -(-path.stat().st_size // 4096) * 4096


def install_one(tree: BootTree, pair: Pair, root: str) -> Path:
    release, vmlinuz, initrd = pair
    shutil.copyfile(vmlinuz, tree.boot / f"vmlinuz-{release}")
    shutil.copyfile(initrd, tree.boot / f"initrd.img-{release}")
    tree.write_entry(release, linux=f"/vmlinuz-{release}", initrd=[f"/initrd.img-{release}"],
                     lines=[("options", f"root={root} ro")])
    return tree.boot / f"vmlinuz-{release}"


@pytest.mark.slow
def test_the_only_kernel_its_restore_refused_fails_the_check(boot_tree: BootTree, pairs: list[Pair]) -> None:
    tree = boot_tree
    release, vmlinuz, initrd = pairs[-1]
    with real_root(tree, release) as root, small_boot(tree):
        kernel = install_one(tree, pairs[-1], root)
        rc, out, err = tree.cli("scan")
        assert rc == 0, out + err
        kernel.unlink()  # the package manager's removal, the entry still there
        # The host's only entry: the rule restores it below the headroom (no other entry boots),
        # but never a file that does not fit at all.
        leave_free(tree, blocks(vmlinuz) - MIB)
        rc, _, err = tree.cli("restore", f"/vmlinuz-{release}")
        assert rc == 1 and "not restoring it" in err and "does not fit" in err, err
        assert not kernel.exists()
        rc, shown, err = _entries(tree, "--check")
        entry = shown[f"{release}.conf"]
        advice = [f["message"] for f in entry["findings"] if f"bootwatch restore /vmlinuz-{release}" in f["message"]]
        assert entry["state"] == "BROKEN" and rc == 1, entry
        assert advice == [], advice



# ------------------------------------------------------------------------------ FIPS


@pytest.mark.slow
def test_fips_without_hmac_is_not_broken_when_the_initramfs_checks_no_hmac(boot_tree: BootTree,
                                                                          pairs: list[Pair]) -> None:
    tree = boot_tree
    release, vmlinuz, initrd = pairs[-1]
    _runtime_config(tree)
    with real_root(tree, release) as root:
        install_one(tree, pairs[-1], f"{root} fips=1")
        assert not (tree.boot / f".vmlinuz-{release}.hmac").exists()
        if shutil.which("qemu-system-x86_64"):  # the boot itself: it reaches the initramfs's /init
            rc, out, err = tree.cli("prove", f"{release}.conf", timeout=300)
            assert rc == 0 and "PASSED" in out, out + err
        _, shown, _ = _entries(tree)
    entry = shown[f"{release}.conf"]
    broken = [f["message"] for f in entry["findings"] if f["state"] == "BROKEN"]
    assert broken == [], broken


# ------------------------------------------------------------------------------ proofs


@pytest.mark.slow
def test_an_entry_named_in_no_utf8_is_proved_as_any_other(boot_tree: BootTree, pairs: list[Pair]) -> None:
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is not installed")
    tree = boot_tree
    release, vmlinuz, initrd = pairs[-1]
    runtime = _runtime_config(tree)
    install_one(tree, pairs[-1], "/dev/vda1")
    os.rename(tree.entries / f"{release}.conf", os.fsencode(tree.entries) + b"/a-latin1-\xe9t\xe9.conf")
    tree.write_entry("z-plain", linux=f"/vmlinuz-{release}", initrd=[f"/initrd.img-{release}"],
                     lines=[("options", "root=/dev/vda1 ro")])
    rc, out, err = tree.cli("prove", "--all", timeout=600)
    assert "internal error" not in err, err
    assert rc == 0, out + err
    assert len(list((runtime / "proofs").glob("*.json"))) == 2


@pytest.mark.slow
def test_an_xz_initramfs_the_kernel_cannot_unpack_is_broken(boot_tree: BootTree, pairs: list[Pair]) -> None:
    if not (shutil.which("xz") and shutil.which("zstd")):
        pytest.skip("needs xz and zstd")
    tree = boot_tree
    release, vmlinuz, initrd = pairs[-1]
    _runtime_config(tree)
    with real_root(tree, release) as root:
        install_one(tree, pairs[-1], root)
        target = tree.boot / f"initrd.img-{release}"
        plain = subprocess.run(["zstd", "-dcq", str(initrd)], check=True, capture_output=True).stdout
        packed = subprocess.run(["xz", "-0", "-q", "-c"], input=plain, check=True, capture_output=True).stdout
        target.write_bytes(packed)
        if shutil.which("qemu-system-x86_64"):  # the boot itself fails
            rc, out, err = tree.cli("prove", f"{release}.conf", timeout=300)
            assert rc == 1 and "Initramfs unpacking failed" in out, out + err
        _, shown, _ = _entries(tree)
    entry = shown[f"{release}.conf"]
    assert [f["state"] for f in entry["findings"] if f["check"] == "format"] == ["BROKEN"], entry


# ------------------------------------------------------------------------------ write-time check


@pytest.mark.slow
def test_a_zeroed_new_initramfs_keeps_the_good_image_with_keep_1(boot_tree: BootTree, pairs: list[Pair]) -> None:
    tree = boot_tree
    release, vmlinuz, initrd = pairs[-1]
    tree.set_keep(1)
    install_one(tree, pairs[-1], "/dev/vda1")
    target = tree.boot / f"initrd.img-{release}"
    good = tree.sha1_of(target)
    rc, out, err = tree.cli("scan")
    assert rc == 0, out + err
    with open(target, "r+b") as f:  # the same size, every byte zero
        f.write(b"\0" * target.stat().st_size)
    rc, out, err = tree.cli("scan")
    assert "Traceback" not in err, err
    rc, out, err = tree.cli("clean")  # the daemon's clean job, hourly
    assert "Traceback" not in err, err
    _, shown, _ = _entries(tree)
    assert shown[f"{release}.conf"]["state"] == "BROKEN"  # the health check knows
    assert good in tree.images_on_disk(), "the previous good initramfs was trimmed (keep = 1)"


@pytest.mark.slow
def test_restore_image_puts_back_an_initramfs_a_full_boot_cut_short(boot_tree: BootTree, pairs: list[Pair]) -> None:
    tree = boot_tree
    release, vmlinuz, initrd = pairs[-1]
    with real_root(tree, release) as root, small_boot(tree):
        install_one(tree, pairs[-1], root)
        target = tree.boot / f"initrd.img-{release}"
        good = tree.sha1_of(target)
        rc, out, err = tree.cli("scan")
        assert rc == 0, out + err
        leave_free(tree, 8 * MIB)
        # update-initramfs writes the new image beside the old one, and /boot fills up: cut short.
        new = tree.boot / f"initrd.img-{release}.new"
        with open(initrd, "rb") as src, open(new, "wb") as dst, contextlib.suppress(OSError):
            shutil.copyfileobj(src, dst)
        assert new.stat().st_size < initrd.stat().st_size
        os.rename(new, target)  # and the package manager goes on, exit 0
        filler = tree.boot / "filler"
        os.truncate(filler, filler.stat().st_size - 2 * MIB)  # an old kernel's System.map and config go
        tree.cli("scan")
        _, shown, _ = _entries(tree)
        assert shown[f"{release}.conf"]["state"] == "BROKEN"
        assert blocks(initrd) < free(tree.boot) + blocks(target)  # the good image fits in place of the cut one
        rc, out, err = tree.cli("restore", "--image", good, f"/initrd.img-{release}")
        assert rc == 0, err
        assert tree.sha1_of(target) == good


def _small_initramfs(workdir: Path) -> bytes:
    """A whole newc cpio archive (an initramfs the kernel unpacks) of 1 MiB of data, made by cpio(1)."""
    if not shutil.which("cpio"):
        pytest.skip("needs cpio")
    tree = workdir / "small-initramfs"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "data").write_bytes(os.urandom(MIB))
    return subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"etc\netc/data\n", cwd=tree,
                          check=True, capture_output=True).stdout


@pytest.mark.slow
def test_a_restore_the_headroom_rule_allows_leaves_the_headroom(boot_tree: BootTree, pairs: list[Pair]) -> None:
    tree = boot_tree
    release, vmlinuz, initrd = pairs[-1]
    with real_root(tree, release) as root, small_boot(tree):
        install_one(tree, pairs[-1], root)  # the initramfs as it was built before: 14 MiB
        target = tree.boot / f"initrd.img-{release}"
        big = tree.sha1_of(target)
        rc, out, err = tree.cli("scan")
        assert rc == 0, out + err
        target.write_bytes(_small_initramfs(tree.root))  # rebuilt smaller since (sound: no format finding)
        rc, out, err = tree.cli("scan")
        assert rc == 0, out + err
        _, shown, _ = _entries(tree)
        assert not [f for f in shown[f"{release}.conf"]["findings"] if f["check"] == "format"], shown
        # After the restore, one more kernel and initramfs of the largest sizes there (the 14 MiB
        # initramfs restored) need 1 MiB more than is left.
        leave_free(tree, blocks(vmlinuz) + blocks(initrd) + blocks(initrd) - blocks(target) - MIB)
        rc, out, err = tree.cli("restore", "--image", big, f"/initrd.img-{release}")
        _, shown, _ = _entries(tree)
    headroom = [f["message"] for f in shown[f"{release}.conf"]["findings"] if f["check"] == "headroom"]
    assert rc != 0 or headroom == [], f"restore exit {rc}; then: {headroom}"


@pytest.mark.slow
def test_an_absolute_kernel_symlink_on_a_separate_boot_is_not_bootable(boot_tree: BootTree,
                                                                       pairs: list[Pair]) -> None:
    tree = boot_tree
    release, vmlinuz, initrd = pairs[-1]
    _runtime_config(tree)
    with real_root(tree, release) as root, small_boot(tree):
        install_one(tree, pairs[-1], root)
        _, shown, _ = _entries(tree)
        assert shown[f"{release}.conf"]["state"] == "BOOTABLE", shown  # the entry as installed
        (tree.boot / "vmlinuz").symlink_to(tree.boot / f"vmlinuz-{release}")  # absolute: the host's path
        assert not (tree.boot / str(tree.boot).lstrip("/")).exists()  # not there from the partition's root
        tree.write_entry(release, linux="/vmlinuz", initrd=[f"/initrd.img-{release}"],
                         lines=[("options", f"root={root} ro")])
        _, shown, _ = _entries(tree)
    assert shown[f"{release}.conf"]["state"] != "BOOTABLE", shown[f"{release}.conf"]


@pytest.mark.slow
def test_an_initramfs_still_being_written_in_place_is_not_reported_broken(boot_tree: BootTree,
                                                                           pairs: list[Pair]) -> None:
    """mkinitcpio writes its image in place, from the compressor's pipe, for seconds: while its
    writer has it open the daemon must record it neither broken nor good."""
    from daemonproc import DaemonProcess, write_config

    tree = boot_tree
    release, vmlinuz, initrd = pairs[-1]
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "150ms"})
    data = initrd.read_bytes()
    with real_root(tree, release) as root:
        install_one(tree, pairs[-1], root)
        target = tree.boot / f"initrd.img-{release}"
        with DaemonProcess(config, tree.root) as daemon:
            daemon.wait_ready(timeout=60)
            with open(target, "wb") as f:  # rebuilt in place: the same bytes again, written slowly
                f.write(data[:len(data) // 2])
                f.flush()
                time.sleep(3)  # the compressor works on: 20 settle windows
                f.write(data[len(data) // 2:])
            time.sleep(2)
            output = daemon.output()
    assert "event=IMAGE_WRITTEN_BROKEN" not in output, output
    assert "event=ENTRY_BROKEN" not in output, output


def test_restore_image_refuses_a_file_being_written(boot_tree: BootTree) -> None:
    tree = boot_tree
    files = tree.write_kernel("6.1")
    tree.write_entry("one", linux="/vmlinuz-6.1", initrd=["/initramfs-6.1.img"])
    rc, out, err = tree.cli("scan")
    assert rc == 0, out + err
    target = tree.path("/initramfs-6.1.img")
    writer = subprocess.Popen(["sh", "-c", 'exec 3<>"$0"; echo open; exec sleep 60', str(target)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "open\n"
        inode = target.stat().st_ino
        rc, out, err = tree.cli("restore", "--image", files["/initramfs-6.1.img"], "/initramfs-6.1.img")
        assert "Traceback" not in err, err
        replaced = target.stat().st_ino != inode
    finally:
        writer.kill()
        writer.wait()
    assert rc == 1 and not replaced, f"exit {rc}, the file being written replaced: {replaced}; {out}{err}"


@pytest.mark.slow
def test_a_broken_new_image_of_a_kernel_since_removed_is_no_longer_reported(boot_tree: BootTree,
                                                                              pairs: list[Pair]) -> None:
    """The sysadmin's answer to a broken new initramfs can be to remove that kernel (its entry and
    files, as a package purge does): then nothing names the path, and STATUS= and the metric must
    stop saying that it is broken and must be put back."""
    from daemonproc import DaemonProcess, write_config
    from polling import wait_until

    tree = boot_tree
    release, vmlinuz, initrd = pairs[-1]
    prom = tree.root / "bootwatch.prom"
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"}, metrics={"textfile": str(prom)})

    def written_broken() -> str | None:
        text = prom.read_text() if prom.exists() else ""
        return next((line.split()[-1] for line in text.splitlines()
                     if line.startswith("bootwatch_images_written_broken ")), None)

    def last_status(daemon: DaemonProcess) -> str:
        while daemon.receive(0.05) is not None:
            pass
        return [m["STATUS"] for m in daemon.messages if "STATUS" in m][-1]

    with real_root(tree, release) as root:
        install_one(tree, pairs[-1], root)
        target = tree.boot / f"initrd.img-{release}"
        with DaemonProcess(config, tree.root) as daemon:
            daemon.wait_ready(timeout=60)
            with open(target, "r+b") as f:  # cut short in place
                f.truncate(target.stat().st_size // 2)
            if not wait_until(lambda: "event=IMAGE_WRITTEN_BROKEN" in daemon.output(), timeout=30):
                pytest.skip("no write-time check on this branch")
            assert wait_until(lambda: "restore --image" in last_status(daemon), timeout=30)
            tree.remove_entry(release)  # the kernel purged: its entry, then its files
            (tree.boot / f"vmlinuz-{release}").unlink()
            target.unlink()
            cleared = wait_until(lambda: "restore --image" not in last_status(daemon)
                                 and written_broken() == "0", timeout=20)
            status, metric = last_status(daemon), written_broken()
    assert cleared, f"STATUS={status!r}; bootwatch_images_written_broken {metric}"


@pytest.mark.slow
def test_a_small_devicetree_is_restored_on_a_boot_below_the_headroom(boot_tree: BootTree, pairs: list[Pair]) -> None:
    dtb = Path("/usr/share/qemu/bamboo.dtb")
    if not dtb.is_file():
        pytest.skip(f"{dtb} (package qemu-system-data) is not installed")
    tree = boot_tree
    release, vmlinuz, initrd = pairs[-1]
    with small_boot(tree):
        install_one(tree, pairs[-1], "/dev/vda1")
        (tree.boot / "dtbs").mkdir()
        shutil.copyfile(dtb, tree.boot / "dtbs" / "board.dtb")
        tree.write_entry(release, linux=f"/vmlinuz-{release}", initrd=[f"/initrd.img-{release}"],
                         devicetree="/dtbs/board.dtb", lines=[("options", "root=/dev/vda1 ro")])
        rc, out, err = tree.cli("scan")
        assert rc == 0, out + err
        leave_free(tree, blocks(vmlinuz) + blocks(initrd) - MIB)  # 1 MiB short of one more kernel
        (tree.boot / "dtbs" / "board.dtb").unlink()
        rc, out, err = tree.cli("restore", "/dtbs/board.dtb")
        assert "Traceback" not in err, err
        restored = (tree.boot / "dtbs" / "board.dtb").exists()
    assert rc == 0 and restored, err
