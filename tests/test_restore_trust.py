"""What a restore may write into the boot directory, and which boot files bootwatch may delete again.

- A restored file never gets setuid, setgid or sticky bits, nor group or other write, and only
  root or the owner of its directory as owner, whatever the (untrusted) index records.
- A restored file gets its own path's mtime, even when another path shares its image.
- A ``.boomrestored`` marker makes a boot file "bootwatch's restored copy" only while the file is
  the very inode bootwatch wrote, unchanged since: a file that a package manager put there again
  (by rename, with the same content) is the package's, and is never deleted.

Everything runs on real files, with the real CLI and daemon as child processes.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from daemonproc import DaemonProcess, write_config
from polling import wait_for

BootTree = Any  # conftest.BootTree

K = "/vmlinuz-1"


def edit_index(tree: BootTree, edit) -> None:
    """Rewrite the cache's index by hand (as an attacker or another tool would), by rename."""
    data = tree.read_index()
    edit(data)
    tmp = tree.cache / "edited.json"
    tmp.write_text(json.dumps(data))
    os.rename(tmp, tree.index_file)


def hostile_meta(data: dict) -> None:
    data["paths"][K].update({"path_mode": 0o106777, "path_uid": 4242, "path_gid": 4343})


# ------------------------------------------------------------------------------------ mode and owner

def test_cli_restore_refuses_setuid_and_foreign_owner_from_a_hostile_index(boot_tree: BootTree, needs_root) -> None:
    boot_tree.write_file(K, 5000, mode=0o644)
    boot_tree.write_entry("one", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    edit_index(boot_tree, hostile_meta)
    content = boot_tree.path(K).read_bytes()
    boot_tree.path(K).unlink()

    rc, out, err = boot_tree.cli("restore", K)
    assert rc == 0, err
    assert "Traceback" not in err
    st = os.lstat(boot_tree.path(K))
    assert boot_tree.path(K).read_bytes() == content
    assert stat.S_IMODE(st.st_mode) == 0o755, oct(st.st_mode)
    assert (st.st_uid, st.st_gid) == (0, 0)
    # One line says what was not applied, naming the file.
    assert "vmlinuz-1: restored with mode 0755 and owner 0:0 instead of the recorded mode 6777" in err, err


def test_the_directory_owner_is_an_acceptable_owner(boot_tree: BootTree, needs_root) -> None:
    """Whoever owns the directory can replace the file anyway: the recorded owner is kept."""
    sub = boot_tree.boot / "user"
    sub.mkdir()
    os.chown(sub, 1234, 5678)
    path = "/user/vmlinuz-2"
    boot_tree.write_file(path, 3000, mode=0o640)
    os.chown(boot_tree.path(path), 1234, 5678)
    boot_tree.write_entry("two", linux=path)
    assert boot_tree.cli("add", path)[0] == 0
    boot_tree.path(path).unlink()
    rc, out, err = boot_tree.cli("restore", path)
    assert rc == 0, err
    st = os.lstat(boot_tree.path(path))
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert "instead of the recorded" not in err, err


def test_daemon_restore_refuses_setuid_and_foreign_owner_from_a_hostile_index(boot_tree: BootTree,
                                                                            needs_root) -> None:
    boot_tree.write_file(K, 5000, mode=0o644)
    boot_tree.write_entry("one", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    edit_index(boot_tree, hostile_meta)
    boot_tree.path(K).unlink()
    config = write_config(boot_tree.root / "daemon.toml", boot_tree.boot, boot_tree.cache, boot_tree.root / "run",
                          watch={"settle": "150ms"})
    with DaemonProcess(config, boot_tree.root) as daemon:
        daemon.wait_ready()  # the first reconcile restored it
        st = os.lstat(boot_tree.path(K))
        assert stat.S_IMODE(st.st_mode) == 0o755, oct(st.st_mode)
        assert (st.st_uid, st.st_gid) == (0, 0)
        wait_for(lambda: "RESTORE_ATTRIBUTES_REFUSED" in daemon.output(), what="the refusal logged")
        # And once more while it runs: removed again, restored again, still safe.
        boot_tree.path(K).unlink()
        wait_for(lambda: daemon.output().count("IMAGE_RESTORED") >= 2, what="the second restore")
        st = os.lstat(boot_tree.path(K))
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0)


# ------------------------------------------------------------------------------------ mtime

def test_two_paths_sharing_an_image_each_get_their_own_mtime(boot_tree: BootTree) -> None:
    content = os.urandom(6000)
    boot_tree.write_file("/vmlinuz-a", content=content, mtime=1_600_000_000)
    boot_tree.write_file("/vmlinuz-b", content=content, mtime=1_700_000_000)
    boot_tree.write_entry("ab", linux="/vmlinuz-a", initrd=["/vmlinuz-b"])
    assert boot_tree.cli("add", "/vmlinuz-a")[0] == 0
    assert boot_tree.cli("add", "/vmlinuz-b")[0] == 0
    assert len(boot_tree.images_on_disk()) == 1
    boot_tree.path("/vmlinuz-a").unlink()
    boot_tree.path("/vmlinuz-b").unlink()
    rc, out, err = boot_tree.cli("restore", "/vmlinuz-a", "/vmlinuz-b")
    assert rc == 0, err
    assert os.stat(boot_tree.path("/vmlinuz-a")).st_mtime == 1_600_000_000
    assert os.stat(boot_tree.path("/vmlinuz-b")).st_mtime == 1_700_000_000


# ------------------------------------------------------------------------------------ whose file is it

def reinstall_by_rename(target: Path, content: bytes) -> None:
    """What dpkg does: write the new file beside the old one, then rename it over it."""
    new = target.with_name(target.name + ".dpkg-new")
    new.write_bytes(content)
    os.chmod(new, 0o644)
    os.rename(new, target)


def marker(tree: BootTree, path: str = K) -> Path:
    return tree.path(path).with_name(f".{Path(path).name}.boomrestored")


@pytest.fixture
def restored_then_reinstalled(boot_tree: BootTree) -> bytes:
    """vmlinuz-1 restored by bootwatch for a snapshot entry, then put back by the package, same content."""
    content = os.urandom(7000)
    boot_tree.write_file(K, content=content)
    boot_tree.write_entry("snapshot", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    boot_tree.path(K).unlink()  # the package removed its kernel (and its own entry)
    rc, out, err = boot_tree.cli("restore", K)
    assert rc == 0, err
    assert marker(boot_tree).exists() and boot_tree.list_json()[K]["state"] == "RESTORED"
    reinstall_by_rename(boot_tree.path(K), content)  # the package is installed again
    return content


@pytest.mark.parametrize("command", [("clean", "--json"), ("scan",), ("remove", K)])
def test_a_reinstalled_kernel_is_never_deleted_as_a_restored_copy(boot_tree: BootTree, restored_then_reinstalled,
                                                                 command) -> None:
    # The marker no longer describes the file: the state says so before anything runs.
    assert boot_tree.list_json()[K]["state"] == "CACHED"
    boot_tree.remove_entry("snapshot")
    rc, out, err = boot_tree.cli(*command)
    assert rc == 0, err
    assert boot_tree.path(K).read_bytes() == restored_then_reinstalled, "the package's own kernel was deleted"
    assert not marker(boot_tree).exists(), "the stale marker stayed"
    if command[0] == "clean":
        assert json.loads(out)["removed_restored_copies"] == []


def test_the_daemon_never_deletes_a_reinstalled_kernel(boot_tree: BootTree, restored_then_reinstalled) -> None:
    config = write_config(boot_tree.root / "daemon.toml", boot_tree.boot, boot_tree.cache, boot_tree.root / "run",
                          watch={"settle": "150ms"})
    with DaemonProcess(config, boot_tree.root) as daemon:
        daemon.wait_ready()
        wait_for(lambda: not marker(boot_tree).exists(), what="the stale marker dropped")
        assert "RESTORED_COPY_REPLACED" in daemon.output()
        boot_tree.remove_entry("snapshot")
        # Something the daemon must apply after the entry went: a new kernel and its entry.
        boot_tree.write_file("/vmlinuz-2", 3000)
        boot_tree.write_entry("two", linux="/vmlinuz-2")
        wait_for(lambda: "/vmlinuz-2" in boot_tree.read_index()["index"], what="the next batch")
        assert boot_tree.path(K).read_bytes() == restored_then_reinstalled
        assert daemon.proc.poll() is None


def test_the_daemon_drops_the_marker_when_the_kernel_is_reinstalled_while_it_runs(boot_tree: BootTree) -> None:
    content = os.urandom(7000)
    boot_tree.write_file(K, content=content)
    boot_tree.write_entry("snapshot", linux=K)
    config = write_config(boot_tree.root / "daemon.toml", boot_tree.boot, boot_tree.cache, boot_tree.root / "run",
                          watch={"settle": "150ms"})
    with DaemonProcess(config, boot_tree.root) as daemon:
        daemon.wait_ready()
        boot_tree.path(K).unlink()
        wait_for(lambda: boot_tree.path(K).exists() and marker(boot_tree).exists(), what="the restore")
        reinstall_by_rename(boot_tree.path(K), content)
        wait_for(lambda: not marker(boot_tree).exists(), what="the stale marker dropped")
        boot_tree.remove_entry("snapshot")
        boot_tree.write_file("/vmlinuz-2", 3000)
        boot_tree.write_entry("two", linux="/vmlinuz-2")
        wait_for(lambda: "/vmlinuz-2" in boot_tree.read_index()["index"], what="the next batch")
        assert boot_tree.path(K).read_bytes() == content
    rc, out, err = boot_tree.cli("clean", "--json")
    assert rc == 0, err
    assert boot_tree.path(K).read_bytes() == content


def test_a_restored_copy_changed_in_place_is_not_deleted(boot_tree: BootTree) -> None:
    """Same inode, same content, but chmod'ed since the restore: changed by someone, so theirs."""
    boot_tree.write_file(K, 5000)
    boot_tree.write_entry("snapshot", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    boot_tree.path(K).unlink()
    assert boot_tree.cli("restore", K)[0] == 0
    os.chmod(boot_tree.path(K), 0o600)
    boot_tree.remove_entry("snapshot")
    report = boot_tree.cli_json("clean", "--json")
    assert report["removed_restored_copies"] == [] and K in report["uncached_paths"]
    assert boot_tree.path(K).exists() and not marker(boot_tree).exists()


def test_the_untouched_restored_copy_is_still_removed(boot_tree: BootTree) -> None:
    """The other side: the very file bootwatch wrote, unchanged, goes with its last reference."""
    boot_tree.write_file(K, 5000)
    boot_tree.write_entry("snapshot", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    boot_tree.path(K).unlink()
    assert boot_tree.cli("restore", K)[0] == 0
    # Read by someone (a backup, a boot loader installer): reading changes nothing that counts.
    boot_tree.path(K).read_bytes()
    boot_tree.remove_entry("snapshot")
    report = boot_tree.cli_json("clean", "--json")
    assert report["removed_restored_copies"] == [K]
    assert not boot_tree.path(K).exists() and not marker(boot_tree).exists()


def test_a_marker_without_a_record_never_deletes_the_file(boot_tree: BootTree) -> None:
    """A marker boom wrote (or anyone): bootwatch has no record of writing the file, so it stays."""
    boot_tree.write_file(K, 5000)
    boot_tree.write_entry("snapshot", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    marker(boot_tree).write_bytes(b"")
    assert boot_tree.list_json()[K]["state"] == "RESTORED"  # as boom computes it
    boot_tree.remove_entry("snapshot")
    for command in (("scan",), ("clean", "--json")):
        rc, out, err = boot_tree.cli(*command)
        assert rc == 0, err
        assert boot_tree.path(K).exists()
    assert marker(boot_tree).exists(), "boom's marker is boom's: left for it"


def test_a_forged_record_in_the_index_is_not_trusted_blindly(boot_tree: BootTree, restored_then_reinstalled) -> None:
    """Records of the wrong type are no record: nothing is deleted."""
    def forge(data: dict) -> None:
        data["paths"][K]["bootwatch"]["restored"] = {"stat": "everything", "image_id": 7}
    edit_index(boot_tree, forge)
    boot_tree.remove_entry("snapshot")
    rc, out, err = boot_tree.cli("clean", "--json")
    assert rc == 0, err
    assert boot_tree.path(K).read_bytes() == restored_then_reinstalled


def test_fsck_reports_a_stale_marker_and_repair_drops_it(boot_tree: BootTree, restored_then_reinstalled) -> None:
    rc, out, err = boot_tree.cli("fsck", "--json")
    assert rc == 0, err
    assert any("marker is stale" in w for w in json.loads(out)["warnings"]), out
    assert marker(boot_tree).exists(), "fsck without --repair changes nothing"
    rc, out, err = boot_tree.cli("fsck", "--repair", "--json")
    assert rc == 0, err
    assert not marker(boot_tree).exists()
    assert boot_tree.path(K).read_bytes() == restored_then_reinstalled
    assert "restored" not in boot_tree.read_index()["paths"][K]["bootwatch"]


@pytest.mark.skipif(shutil.which("dpkg") is None or shutil.which("dpkg-deb") is None, reason="needs dpkg")
def test_real_dpkg_reinstall_over_a_restored_kernel_survives_clean(boot_tree: BootTree, needs_root) -> None:
    """The reported case with the real package manager: dpkg --root on a tree whose /boot is ours."""
    root, kernel = boot_tree.root, "/vmlinuz-9.9-bwtest"
    package = root / "pkg"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "boot").mkdir()
    content = os.urandom(9000)
    (package / "boot" / kernel.lstrip("/")).write_bytes(content)
    (package / "DEBIAN" / "control").write_text(
        "Package: bwtest-kernel\nVersion: 1.0\nArchitecture: all\nMaintainer: bootwatch tests <root@localhost>\n"
        "Description: a kernel-like file in /boot\n")
    deb = root / "bwtest-kernel.deb"
    subprocess.run(["dpkg-deb", "--build", "-Znone", str(package), str(deb)], check=True, capture_output=True)
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates"):
        (root / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()

    def dpkg(*args: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(["dpkg", f"--root={root}", "--force-script-chrootless", *args],
                              capture_output=True, text=True, check=False)

    assert dpkg("-i", str(deb)).returncode == 0
    boot_tree.write_entry("snapshot", linux=kernel)
    assert boot_tree.cli("add", kernel)[0] == 0
    assert dpkg("-r", "bwtest-kernel").returncode == 0  # the package goes; the snapshot entry stays
    assert not boot_tree.path(kernel).exists()
    rc, out, err = boot_tree.cli("restore", kernel)
    assert rc == 0, err
    assert dpkg("-i", str(deb)).returncode == 0  # reinstalled: dpkg renames its file over ours
    boot_tree.remove_entry("snapshot")
    for command in (("scan",), ("clean", "--json")):
        rc, out, err = boot_tree.cli(*command)
        assert rc == 0, err
    verify = dpkg("-V", "bwtest-kernel")
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout + verify.stderr
    assert boot_tree.path(kernel).read_bytes() == content
    assert not boot_tree.path(kernel).with_name(f".{kernel[1:]}.boomrestored").exists()


NOBODY = 65534


@pytest.fixture
def nobody_tree(needs_root):
    """A boot directory and cache owned by ``nobody``, somewhere ``nobody`` can reach."""
    base = Path(tempfile.mkdtemp(prefix="bootwatch-nobody-", dir="/var/tmp"))
    try:
        (base / "boot" / "loader" / "entries").mkdir(parents=True)
        (base / "config.toml").write_text("")
        for path in [base, *base.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
        yield base
    finally:
        shutil.rmtree(base)


def python_for_nobody() -> str:
    """The test's interpreter may live where ``nobody`` cannot reach (a venv of a pyenv under /root):
    then the system's, which runs the CLI from the repository (its commands need no third-party package)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run([candidate, "-c", ""], user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
                                   capture_output=True)
        except OSError:  # not executable by nobody, or missing
            continue
        if probe.returncode == 0:
            return candidate
    pytest.skip("no Python interpreter that nobody may run")


def run_as_nobody(base: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), PYTHONDONTWRITEBYTECODE="1",
               BOOTWATCH_CONFIG=str(base / "config.toml"), HOME=str(base))
    return subprocess.run([python_for_nobody(), "-m", "bootwatch", "--boot-dir", str(base / "boot"),
                           "--cache-dir", str(base / "cache"), *args], env=env, cwd=base, user=NOBODY,
                          group=NOBODY, extra_groups=[], capture_output=True, text=True, timeout=60)


def test_restore_by_another_user_gives_the_file_to_that_user(nobody_tree: Path) -> None:
    """Not root: the file is the running user's, whatever uid and gid the index records."""
    boot = nobody_tree / "boot"
    kernel = boot / "vmlinuz-1"
    kernel.write_bytes(os.urandom(4000))
    os.chown(kernel, NOBODY, NOBODY)
    (boot / "loader" / "entries" / "one.conf").write_text("title one\nlinux /vmlinuz-1\n")
    assert run_as_nobody(nobody_tree, "add", K).returncode == 0
    index_file = nobody_tree / "cache" / "cacheindex.json"
    data = json.loads(index_file.read_text())
    hostile_meta(data)
    index_file.write_text(json.dumps(data))
    kernel.unlink()
    proc = run_as_nobody(nobody_tree, "restore", K)
    assert proc.returncode == 0, proc.stderr
    st = os.lstat(kernel)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, NOBODY, NOBODY)
    assert "instead of the recorded mode 6777 and owner 4242:4343" in proc.stderr, proc.stderr


def test_a_fifo_named_like_the_marker_does_not_hang_a_restore(boot_tree: BootTree) -> None:
    """The marker is created with O_WRONLY: a FIFO of that name, with no reader, blocked it forever
    while the writers' lock was held. Now one line, exit 1, and nothing restored."""
    boot_tree.write_file(K, 3000)
    boot_tree.write_entry("one", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    boot_tree.path(K).unlink()
    os.mkfifo(marker(boot_tree))
    rc, out, err = boot_tree.cli("restore", K, timeout=30)
    boot_tree.assert_clean_error(rc, err, names=[".vmlinuz-1.boomrestored"])
    assert not boot_tree.path(K).exists()
    assert stat.S_ISFIFO(os.lstat(marker(boot_tree)).st_mode)
    assert boot_tree.list_json()[K]["state"] == "MISSING"
