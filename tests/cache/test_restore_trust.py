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
import time
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


@pytest.mark.slow
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

@pytest.mark.slow
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


def restore_for_a_snapshot(boot_tree: BootTree) -> None:
    """vmlinuz-1 cached for a snapshot entry, removed from /boot, and restored by bootwatch."""
    boot_tree.write_file(K, 5000)
    boot_tree.write_entry("snapshot", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    boot_tree.path(K).unlink()
    assert boot_tree.cli("restore", K)[0] == 0


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_restored_copy_changed_in_place_is_not_deleted(boot_tree: BootTree) -> None:
    """Same inode, same content, but chmod'ed since the restore: changed by someone, so theirs."""
    restore_for_a_snapshot(boot_tree)
    os.chmod(boot_tree.path(K), 0o600)
    boot_tree.remove_entry("snapshot")
    report = boot_tree.cli_json("clean", "--json")
    assert report["removed_restored_copies"] == [] and K in report["uncached_paths"]
    assert boot_tree.path(K).exists() and not marker(boot_tree).exists()


@pytest.mark.slow
def test_the_untouched_restored_copy_is_still_removed(boot_tree: BootTree) -> None:
    """The other side: the very file bootwatch wrote, unchanged, goes with its last reference."""
    restore_for_a_snapshot(boot_tree)
    # Read by someone (a backup, a boot loader installer): reading changes nothing that counts.
    boot_tree.path(K).read_bytes()
    boot_tree.remove_entry("snapshot")
    report = boot_tree.cli_json("clean", "--json")
    assert report["removed_restored_copies"] == [K]
    assert not boot_tree.path(K).exists() and not marker(boot_tree).exists()


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_forged_record_in_the_index_is_not_trusted_blindly(boot_tree: BootTree, restored_then_reinstalled) -> None:
    """Records of the wrong type are no record: nothing is deleted."""
    def forge(data: dict) -> None:
        data["paths"][K]["bootwatch"]["restored"] = {"stat": "everything", "image_id": 7}
    edit_index(boot_tree, forge)
    boot_tree.remove_entry("snapshot")
    rc, out, err = boot_tree.cli("clean", "--json")
    assert rc == 0, err
    assert boot_tree.path(K).read_bytes() == restored_then_reinstalled


@pytest.mark.slow
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


@pytest.mark.slow
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

    def dpkg(*args: str) -> subprocess.CompletedProcess[str]:
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


def run_as_nobody(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), PYTHONDONTWRITEBYTECODE="1",
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


@pytest.mark.slow
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


# ------------------------------------------------------------------------------------ symlinked paths

@pytest.mark.slow
def test_clean_never_deletes_a_boot_file_a_readable_entry_references(boot_tree: BootTree) -> None:
    """Restoring /vmlinuz, a dangling link to vmlinuz-3.0, writes vmlinuz-3.0; when the entry naming
    /vmlinuz goes, clean must not delete vmlinuz-3.0, which the entry 'main' references."""
    tree = boot_tree
    tree.write_file("/vmlinuz-3.0", 100_000)
    os.symlink("vmlinuz-3.0", tree.path("/vmlinuz"))
    tree.write_entry("main", linux="/vmlinuz-3.0")
    tree.write_entry("snapshot", linux="/vmlinuz")
    assert tree.cli("scan")[0] == 0
    tree.path("/vmlinuz-3.0").unlink()
    rc, out, err = tree.cli("scan")  # restores /vmlinuz-3.0 for 'main'; /vmlinuz is a link to it
    assert rc == 0, out + err
    tree.remove_entry("snapshot")
    rc, out, err = tree.cli("clean")
    assert tree.path("/vmlinuz-3.0").exists(), \
        f"clean deleted /vmlinuz-3.0, which the entry 'main' references: {out}{err}"
    assert os.path.islink(tree.path("/vmlinuz"))


@pytest.fixture
def dangling_link(boot_tree: BootTree) -> bytes:
    """/vmlinuz -> vmlinuz-3.0, only /vmlinuz referenced and cached, then vmlinuz-3.0 removed."""
    content = os.urandom(9000)
    boot_tree.write_file("/vmlinuz-3.0", content=content)
    os.symlink("vmlinuz-3.0", boot_tree.path("/vmlinuz"))
    boot_tree.write_entry("snapshot", linux="/vmlinuz")
    assert boot_tree.cli("add", "/vmlinuz")[0] == 0
    boot_tree.path("/vmlinuz-3.0").unlink()
    return content


@pytest.mark.slow
def test_a_dangling_symlink_is_never_restored_through(boot_tree: BootTree, dangling_link: bytes) -> None:
    """Its target is another path: restore and scan report it and write nothing."""
    rc, out, err = boot_tree.cli("restore", "/vmlinuz")
    boot_tree.assert_clean_error(rc, err, names=["vmlinuz", "symlink"])
    rc, out, err = boot_tree.cli("scan", "--json")
    assert rc == 0, err
    assert "/vmlinuz" in json.loads(out)["missing"]
    assert "never restores through a symlink" in err, err
    assert not boot_tree.path("/vmlinuz-3.0").exists() and os.path.islink(boot_tree.path("/vmlinuz"))
    assert not marker(boot_tree, "/vmlinuz").exists()


@pytest.mark.slow
def test_a_path_whose_link_is_gone_is_restored_as_a_file_at_its_own_name(boot_tree: BootTree,
                                                                         dangling_link: bytes) -> None:
    """Without the link, the path is restored as a regular file at that name; clean later removes
    exactly that name."""
    boot_tree.path("/vmlinuz").unlink()
    rc, out, err = boot_tree.cli("restore", "/vmlinuz")
    assert rc == 0, err
    st = os.lstat(boot_tree.path("/vmlinuz"))
    assert stat.S_ISREG(st.st_mode) and boot_tree.path("/vmlinuz").read_bytes() == dangling_link
    assert not boot_tree.path("/vmlinuz-3.0").exists()
    boot_tree.write_file("/vmlinuz-3.0", content=b"the package's")  # another path, another file
    boot_tree.remove_entry("snapshot")
    assert boot_tree.cli_json("clean", "--json")["removed_restored_copies"] == ["/vmlinuz"]
    assert not os.path.lexists(boot_tree.path("/vmlinuz"))
    assert boot_tree.path("/vmlinuz-3.0").read_bytes() == b"the package's"


@pytest.mark.slow
def test_a_restored_copy_replaced_by_a_symlink_is_not_followed(boot_tree: BootTree) -> None:
    """remove_restored_copy looks at the name (lstat), never at what a link there names."""
    boot_tree.write_file(K, 5000)
    boot_tree.write_file("/vmlinuz-2", content=b"another kernel")
    boot_tree.write_entry("snapshot", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    boot_tree.path(K).unlink()
    assert boot_tree.cli("restore", K)[0] == 0
    link = boot_tree.path(K).with_name("link.new")
    os.symlink("vmlinuz-2", link)
    os.rename(link, boot_tree.path(K))
    boot_tree.remove_entry("snapshot")
    report = boot_tree.cli_json("clean", "--json")
    assert report["removed_restored_copies"] == []
    assert os.path.islink(boot_tree.path(K)) and boot_tree.path("/vmlinuz-2").read_bytes() == b"another kernel"


@pytest.mark.slow
def test_a_restored_copy_another_referenced_path_links_to_stays(boot_tree: BootTree) -> None:
    """/vmlinuz -> vmlinuz-1 is referenced: the restored vmlinuz-1 is needed, whatever its own entry says."""
    restore_for_a_snapshot(boot_tree)
    os.symlink("vmlinuz-1", boot_tree.path("/vmlinuz"))
    boot_tree.write_entry("default", linux="/vmlinuz")
    boot_tree.remove_entry("snapshot")
    for command in (("scan",), ("clean", "--json")):
        rc, out, err = boot_tree.cli(*command)
        assert rc == 0, err
        assert boot_tree.path(K).exists(), f"{command}: deleted what /vmlinuz leads to"


# ------------------------------------------------------------------------------------ coarse timestamps

@pytest.mark.slow
def test_a_reinstalled_kernel_with_a_reused_inode_is_not_deleted(boot_tree: BootTree, needs_root) -> None:
    """On ext4 with 128-byte inodes (one-second timestamps, no birth time) a kernel removed
    and installed again (unlink, create, cp -p) within the second of a restore gets the freed inode
    back with the same size, mode, owner, mtime and ctime: only the inode generation tells it apart."""
    tree = boot_tree
    k1, k3 = "/vmlinuz-1.0", "/vmlinuz-3.0"
    image = tree.root / "boot.img"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-I", "128", "-O", "^has_journal", str(image)], check=True,
                   capture_output=True)
    shutil.rmtree(tree.boot)
    tree.boot.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(tree.boot)], check=True)
    try:
        tree.entries.mkdir(parents=True)
        tree.write_file(k1, 100_000)
        tree.write_file(k3, 100_000)
        package_copy = tree.root / "package-vmlinuz-3.0"
        shutil.copy2(tree.path(k3), package_copy)  # what the package installs, with its mtime
        tree.write_entry("main", linux=k1)
        tree.write_entry("snapshot", linux=k3)
        rc, out, err = tree.cli("scan")
        assert rc == 0, out + err
        for _attempt in range(10):
            tree.path(k3).unlink()
            while time.time() % 1 > 0.05:  # start a second: the restore and the reinstall share it
                time.sleep(0.005)
            rc, out, err = tree.cli("restore", k3)
            assert rc == 0, out + err
            restored = os.lstat(tree.path(k3))
            # the package manager installs the same kernel again: unlink, create, copy, keep mtime
            tree.path(k3).unlink()
            shutil.copy2(package_copy, tree.path(k3))
            os.chmod(tree.path(k3), restored.st_mode & 0o7777)
            package = os.lstat(tree.path(k3))
            if (package.st_ino, package.st_ctime_ns, package.st_mtime_ns, package.st_size) == \
                    (restored.st_ino, restored.st_ctime_ns, restored.st_mtime_ns, restored.st_size):
                break
        else:
            pytest.skip("could not reproduce the same inode within one second")
        record = tree.read_index()["paths"][k3]["bootwatch"]["restored"]
        tree.remove_entry("snapshot")
        rc, out, err = tree.cli("scan")
        assert tree.path(k3).exists(), f"bootwatch deleted the package's reinstalled {k3}: {out}{err}"
        assert not marker(tree, k3).exists(), "the stale marker stayed"
        assert record["generation"] is not None and record["birth_ns"] is None  # what ext4 -I 128 offers
    finally:
        subprocess.run(["umount", str(tree.boot)], check=True)


@pytest.mark.slow
def test_the_record_holds_what_the_filesystem_offers(boot_tree: BootTree) -> None:
    """tmpfs or ext4 here: a birth time and/or a generation, read from the restored file itself."""
    from bootwatch.cache.fileid import birth_time_ns, inode_generation
    boot_tree.write_file(K, 3000)
    boot_tree.write_entry("one", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    boot_tree.path(K).unlink()
    assert boot_tree.cli("restore", K)[0] == 0
    record = boot_tree.read_index()["paths"][K]["bootwatch"]["restored"]
    fd = os.open(boot_tree.path(K), os.O_RDONLY)
    try:
        assert (record["birth_ns"], record["generation"]) == (birth_time_ns(fd), inode_generation(fd))
    finally:
        os.close(fd)
    assert record["made_marker"] is True


# ------------------------------------------------------------------------------------ the marker bootwatch made

@pytest.mark.slow
def test_bootwatch_marker_does_not_outlive_its_file(boot_tree: BootTree) -> None:
    """The restored copy and its entry removed by the package manager: the marker bootwatch made
    must not go on sitting beside the kernel installed again later, as boom's."""
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_kernel("3.0")
    tree.write_entry("main", linux="/vmlinuz-1.0")
    tree.write_entry("snapshot", linux="/vmlinuz-3.0")
    package = tree.root / "package-vmlinuz-3.0"
    shutil.copy2(tree.path("/vmlinuz-3.0"), package)
    assert tree.cli("scan")[0] == 0
    tree.path("/vmlinuz-3.0").unlink()
    assert tree.cli("scan")[0] == 0  # restored, with bootwatch's marker
    mark = marker(tree, "/vmlinuz-3.0")
    assert mark.exists()
    tree.path("/vmlinuz-3.0").unlink()  # the package manager removes it and the entry
    tree.remove_entry("snapshot")
    assert tree.cli("scan")[0] == 0
    assert not mark.exists(), "the marker bootwatch made outlived its file"
    shutil.copy2(package, tree.boot / "vmlinuz-3.0.new")  # ...and installs the kernel again
    os.rename(tree.boot / "vmlinuz-3.0.new", tree.path("/vmlinuz-3.0"))
    for command in (("scan",), ("clean",), ("fsck", "--repair")):
        rc, out, err = tree.cli(*command)
        assert rc == 0, out + err
    assert not mark.exists(), "bootwatch's marker stays beside the package's kernel"
    assert tree.path("/vmlinuz-3.0").read_bytes() == package.read_bytes()


@pytest.mark.slow
def test_scan_with_track_all_removes_the_marker_it_made_when_the_file_goes(boot_tree: BootTree) -> None:
    """With track = "all" a scan may conclude "nothing changed" from the signatures without the index:
    not while a marker lies beside a file that is gone."""
    boot_tree.config.write_text('[cache]\ntrack = "all"\n')
    boot_tree.write_file(K, 5000)
    boot_tree.write_file("/vmlinuz-2", 5000)
    boot_tree.write_entry("snapshot", linux=K)
    boot_tree.write_entry("two", linux="/vmlinuz-2")
    assert boot_tree.cli("scan")[0] == 0
    boot_tree.path(K).unlink()
    assert boot_tree.cli("scan")[0] == 0
    assert marker(boot_tree).exists()
    assert boot_tree.cli("scan")[0] == 0  # a full pass that leaves the signatures file of this index
    boot_tree.path(K).unlink()
    boot_tree.remove_entry("snapshot")
    assert boot_tree.cli("scan")[0] == 0
    assert not marker(boot_tree).exists()


@pytest.mark.slow
def test_the_daemon_removes_the_marker_it_made_when_the_file_goes(boot_tree: BootTree) -> None:
    boot_tree.write_file(K, 7000)
    boot_tree.write_entry("snapshot", linux=K)
    config = write_config(boot_tree.root / "daemon.toml", boot_tree.boot, boot_tree.cache, boot_tree.root / "run",
                          watch={"settle": "150ms"})
    with DaemonProcess(config, boot_tree.root) as daemon:
        daemon.wait_ready()
        boot_tree.path(K).unlink()
        wait_for(lambda: boot_tree.path(K).exists() and marker(boot_tree).exists(), what="the restore")
        boot_tree.remove_entry("snapshot")
        boot_tree.path(K).unlink()
        wait_for(lambda: not marker(boot_tree).exists(), what="the marker removed with its file")
        assert daemon.proc.poll() is None


@pytest.mark.slow
def test_a_marker_that_was_there_before_the_restore_stays_when_the_file_goes(boot_tree: BootTree) -> None:
    """bootwatch removes only the marker it made: one it found (boom's) is left for boom."""
    boot_tree.write_file(K, 5000)
    boot_tree.write_entry("snapshot", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    boot_tree.path(K).unlink()
    marker(boot_tree).write_bytes(b"")
    assert boot_tree.cli("restore", K)[0] == 0
    assert boot_tree.read_index()["paths"][K]["bootwatch"]["restored"]["made_marker"] is False
    boot_tree.path(K).unlink()
    boot_tree.remove_entry("snapshot")
    assert boot_tree.cli("scan")[0] == 0
    assert marker(boot_tree).exists()


@pytest.mark.slow
def test_fsck_repairs_a_marker_that_outlived_its_file(boot_tree: BootTree) -> None:
    """Left by an older bootwatch (or a run killed in between): fsck says so, --repair removes it."""
    restore_for_a_snapshot(boot_tree)
    boot_tree.path(K).unlink()
    rc, out, err = boot_tree.cli("fsck", "--json")
    assert any("marker" in w and "is gone" in w for w in json.loads(out)["warnings"]), out
    assert marker(boot_tree).exists()
    rc, out, err = boot_tree.cli("fsck", "--repair", "--json")
    assert rc == 0, err
    assert not marker(boot_tree).exists()
    assert "restored" not in boot_tree.read_index()["paths"][K].get("bootwatch", {})


@pytest.mark.slow
def test_a_restore_after_the_restored_copy_went_makes_its_marker_again(boot_tree: BootTree) -> None:
    """The earlier restore's marker goes with its file, so the new restore made (and owns) its marker."""
    boot_tree.write_file(K, 5000)
    boot_tree.write_entry("snapshot", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    for _ in range(2):
        boot_tree.path(K).unlink()
        assert boot_tree.cli("restore", K)[0] == 0
        assert boot_tree.read_index()["paths"][K]["bootwatch"]["restored"]["made_marker"] is True
    boot_tree.remove_entry("snapshot")
    assert boot_tree.cli_json("clean", "--json")["removed_restored_copies"] == [K]
    assert not marker(boot_tree).exists() and not boot_tree.path(K).exists()


# ------------------------------------------------------------------------------------ a rename over the name

RENAMER = r"""
import os, sys
directory, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(rounds):
    if os.read(0, 1) != b"g":
        break
    for _ in range(int.from_bytes(os.urandom(2), "little") % 3000):  # somewhere in the removal
        pass
    os.rename(os.path.join(directory, f"package-{i}"), os.path.join(directory, name))
    os.write(1, b"d")
"""


@pytest.mark.slow
def test_a_rename_over_the_name_during_the_removal_is_never_deleted(tmp_path: Path) -> None:
    """Suspicion a: a package renames its kernel over the name while bootwatch removes its restored
    copy there. A real second process renames at a random moment of each removal; whatever the
    moment, the package's file is at the name afterwards (the restored copy went, or stayed if
    the rename came first), and nothing is left aside."""
    from bootwatch.cache.fileid import ASIDE_PREFIX, Removal, identity_at, remove_if_same
    name, rounds = "vmlinuz-1", 1000
    target = tmp_path / name
    proc = subprocess.Popen([sys.executable, "-c", RENAMER, str(tmp_path), name, str(rounds)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    outcomes = []
    try:
        for i in range(rounds):
            (tmp_path / f"package-{i}").write_bytes(f"package {i}".encode())
            ours = tmp_path / "restore.tmp"
            ours.write_bytes(b"restored")
            os.rename(ours, target)
            identity = identity_at(target)
            assert identity is not None
            os.write(proc.stdin.fileno(), b"g")
            outcomes.append(remove_if_same(target, identity).outcome)
            assert os.read(proc.stdout.fileno(), 1) == b"d"
            assert target.exists() and target.read_bytes() == f"package {i}".encode(), \
                f"round {i}: the package's file was deleted ({outcomes[-1]})"
        assert not [p for p in os.listdir(tmp_path) if p.startswith(ASIDE_PREFIX)]
        assert set(outcomes) <= {Removal.REMOVED, Removal.OTHER}
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_file_left_aside_by_a_killed_removal_is_put_back(boot_tree: BootTree) -> None:
    """A removal killed between its two renames leaves the file under its aside name: the next scan
    (or clean, or the daemon's start) renames it back, never over a file that has the name now."""
    from bootwatch.cache.fileid import aside_name
    content = os.urandom(6000)
    boot_tree.write_file(K, content=content)
    boot_tree.write_entry("one", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    aside = boot_tree.path(K).with_name(aside_name("vmlinuz-1"))
    os.rename(boot_tree.path(K), aside)
    rc, out, err = boot_tree.cli("scan", "--json")
    assert rc == 0, err
    assert boot_tree.path(K).read_bytes() == content and not aside.exists()
    assert json.loads(out)["restored"] == []
    # Another file has the name meanwhile: both stay, and the journal says so.
    os.rename(boot_tree.path(K), aside)
    boot_tree.write_file(K, content=b"newer")
    rc, out, err = boot_tree.cli("clean")
    assert rc == 0, err
    assert aside.read_bytes() == content and boot_tree.path(K).read_bytes() == b"newer"
    assert "another file has its name now" in err, err
