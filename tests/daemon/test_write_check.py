"""A broken kernel or initramfs is caught the moment it is written into the boot directory.

Real parts: Debian's cloud kernel (tests/realboot caches the package), an initramfs made for it
by Debian's own mkinitramfs, a real ``bootwatch run`` as a child process with a real sd_notify
socket and its metrics textfile, the real command line. A broken image is written the way a full
``/boot`` leaves one: the first part of the real image, then the writer closes it. Nothing is
timed: each wait is a poll with a bound well above the settle window plus the check.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess, run_with_config, write_config
from polling import wait_for
from realboot.grub_mkconfig import Kernel, Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import mkinitramfs_image

pytestmark = pytest.mark.slow  # real daemons and real images

BootTree = Any  # conftest.BootTree
BOUND = 60.0  # each wait's bound: the settle window (100 ms) and a check of a 14 MB image, with room for a loaded CI


@pytest.fixture(scope="module")
def real_pair() -> tuple[Kernel, Path]:
    """A real kernel and its real mkinitramfs image."""
    try:
        deb = kernel_debs(1)[0]
        return extracted_kernel(deb), mkinitramfs_image(deb)
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def tree(boot_tree: BootTree, real_pair: tuple[Kernel, Path]) -> BootTree:
    """A BLS entry naming the real kernel and initramfs, both in the boot directory."""
    kernel, initramfs = real_pair
    version = kernel.version
    shutil.copyfile(kernel.boot / f"vmlinuz-{version}", boot_tree.path(f"/vmlinuz-{version}"))
    shutil.copyfile(initramfs, boot_tree.path(f"/initrd.img-{version}"))
    boot_tree.write_entry("debian", linux=f"/vmlinuz-{version}", initrd=[f"/initrd.img-{version}"])
    boot_tree.version = version
    return boot_tree


@pytest.fixture
def daemon(tree: BootTree) -> Iterator[DaemonProcess]:
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"}, metrics={"textfile": str(tree.root / "bootwatch.prom")})
    tree.daemon_config = config
    with DaemonProcess(config, tree.root) as proc:
        proc.wait_ready(timeout=BOUND)
        yield proc


def write_cut_off(path: Path, source: bytes, keep: float = 0.5) -> None:
    """Write the first part of ``source`` at ``path`` in place, as a writer on a full disk leaves it."""
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(source[:int(len(source) * keep)])


def metric(tree: BootTree, name: str) -> str | None:
    try:
        text = (tree.root / "bootwatch.prom").read_text()
    except FileNotFoundError:
        return None
    return next((line.split()[-1] for line in text.splitlines() if line.startswith(f"bootwatch_{name} ")), None)


def status_line(proc: DaemonProcess, predicate: Any) -> str | None:
    """The latest STATUS= the daemon sent, if it satisfies ``predicate`` (reads what arrived)."""
    while proc.receive(0.05) is not None:
        pass
    statuses = [m["STATUS"] for m in proc.messages if "STATUS" in m]
    return statuses[-1] if statuses and predicate(statuses[-1]) else None


def event_lines(proc: DaemonProcess, name: str) -> list[str]:
    return [line for line in proc.output().splitlines() if f"event={name}" in line]


def index(tree: BootTree) -> dict[str, Any]:
    return json.loads(tree.index_file.read_text())


@pytest.mark.parametrize("role", ["initrd", "kernel"])
def test_a_truncated_image_written_while_the_daemon_runs_is_reported_and_the_older_one_restorable(
        tree: BootTree, daemon: DaemonProcess, role: str) -> None:
    path = f"/initrd.img-{tree.version}" if role == "initrd" else f"/vmlinuz-{tree.version}"
    good = index(tree)["index"][path][-1]
    content = tree.path(path).read_bytes()
    assert metric(tree, "images_written_broken") == "0"

    write_cut_off(tree.path(path), content)
    broken = tree.sha1_of(tree.path(path))
    command = f"bootwatch restore --image {good} {path}"

    # The journal, at once: its own event, naming the broken image, what is wrong and the command.
    [line] = wait_for(lambda: event_lines(daemon, "IMAGE_WRITTEN_BROKEN"), timeout=BOUND,
                      what="the IMAGE_WRITTEN_BROKEN event")
    assert f"{path}: the new image {broken} written there is broken: " in line
    assert "truncated bzImage" in line if role == "kernel" else "zstd" in line
    assert command in line and "ERROR" in line
    # STATUS= and the metric.
    status = wait_for(lambda: status_line(daemon, lambda s: command in s), timeout=BOUND, what="STATUS= naming it")
    assert f"new image {broken[:12]} of {path} is BROKEN" in status
    wait_for(lambda: metric(tree, "images_written_broken") == "1", timeout=BOUND, what="the metric")
    # The result is recorded in the index, as a verification (boom-compatible: inside "bootwatch").
    verified = index(tree)["images"][broken]["bootwatch"]["verified"]
    assert verified["ok"] is False and verified["checks"][0]["outcome"] == "failed"
    assert index(tree)["images"][good]["bootwatch"]["verified"]["ok"] is True

    # The previous good image is in the cache, and the named command puts it back.
    assert tree.image(good).exists()
    proc = run_with_config(tree.daemon_config, *command.split()[1:])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tree.sha1_of(tree.path(path)) == good
    restored_inode = os.stat(tree.path(path)).st_ino

    # The daemon takes the restored file for what it is: no change to cache, nothing to undo.
    wait_for(lambda: status_line(daemon, lambda s: "BROKEN" not in s), timeout=BOUND, what="STATUS= without it")
    wait_for(lambda: metric(tree, "images_written_broken") == "0", timeout=BOUND, what="the metric back at 0")
    assert not [line for line in daemon.output().splitlines()
                if f"{path}: content changed, new image {good}" in line], daemon.output()
    assert os.stat(tree.path(path)).st_ino == restored_inode and tree.sha1_of(tree.path(path)) == good
    rows = {row["path"]: row for row in json.loads(run_with_config(tree.daemon_config, "list", "--json").stdout)}
    assert rows[path]["image_id"] == good and rows[path]["state"] == "RESTORED"
    assert len(event_lines(daemon, "IMAGE_WRITTEN_BROKEN")) == 1


def test_a_good_new_image_is_not_reported(tree: BootTree, daemon: DaemonProcess) -> None:
    path = f"/initrd.img-{tree.version}"
    before = index(tree)["index"][path]
    # The real image written anew by rename (as update-initramfs does), with zero padding at its
    # end, which the kernel's unpacker skips: another image, and a sound one.
    tmp = tree.path(path).with_name(".initrd.new")
    tmp.write_bytes(tree.path(path).read_bytes() + b"\0" * 512)
    os.rename(tmp, tree.path(path))
    new = tree.sha1_of(tree.path(path))
    wait_for(lambda: new in index(tree)["index"].get(path, []), timeout=BOUND, what="the new image cached")
    wait_for(lambda: "verified" in index(tree)["images"][new].get("bootwatch", {}), timeout=BOUND,
             what="its check recorded")
    assert index(tree)["images"][new]["bootwatch"]["verified"]["ok"] is True
    assert not event_lines(daemon, "IMAGE_WRITTEN_BROKEN")
    assert metric(tree, "images_written_broken") == "0"
    assert before[-1] in index(tree)["index"][path]


# ------------------------------------------------------------------------------------ scan: the same pass

def test_with_keep_1_the_previous_good_image_stays_and_is_restorable(tree: BootTree) -> None:
    """The kernel was cached by 'add' (no check then); a truncated one is written; 'scan' checks
    the old image before caching the new one, so trimming to keep = 1 leaves it, and clean too."""
    tree.set_keep(1)
    path = f"/vmlinuz-{tree.version}"
    rc, out, err = tree.cli("add", path)
    assert rc == 0, out + err
    good = tree.sha1_of(tree.path(path))
    assert "verified" not in index(tree)["images"][good].get("bootwatch", {})
    write_cut_off(tree.path(path), tree.path(path).read_bytes())
    broken = tree.sha1_of(tree.path(path))

    report = tree.cli_json("scan", "--json")
    assert report["written_broken"] == [{
        "path": path, "image_id": broken, "good_image_id": good,
        "problem": report["written_broken"][0]["problem"],
        "restore_command": f"bootwatch restore --image {good} {path}"}], report
    assert report["written_broken"][0]["problem"].startswith("truncated bzImage")
    for _ in range(2):
        assert set(index(tree)["index"][path]) == {good, broken}, "the previous good image was trimmed"
        rc, out, err = tree.cli("clean")
        assert rc == 0, out + err
    assert tree.image(good).exists()
    rc, out, err = tree.cli("restore", "--image", good[:12], path)
    assert rc == 0, out + err
    assert tree.sha1_of(tree.path(path)) == good


def test_an_empty_initramfs_is_broken_for_the_entry_that_names_it(tree: BootTree) -> None:
    """A write that failed at once (no room for a first block) leaves an empty file: no format
    check can fail on it, but no entry boots an empty initramfs."""
    path = f"/initrd.img-{tree.version}"
    assert tree.cli("scan")[0] == 0
    good = index(tree)["index"][path][-1]
    tree.path(path).write_bytes(b"")
    rc, out, err = tree.cli("scan")
    assert rc == 0, out + err
    assert "1 new image broken" in out
    [line] = [line for line in err.splitlines() if "event=IMAGE_WRITTEN_BROKEN" in line]
    assert f"{path}: the new image {tree.sha1_bytes(b'')} written there is broken: is empty, not an initramfs image;" \
        in line
    assert f"bootwatch restore --image {good} {path}" in line
