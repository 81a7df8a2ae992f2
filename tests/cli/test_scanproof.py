"""``scan --quiet`` of an unchanged boot directory through the scan proof (bootwatch/scanproof.py).

Every case is a real boot tree, cached by a real ``scan``, left older than the racy margin, and
proved by a second ``scan --quiet``; each test first checks that a third one takes the fast path
(it does not import the full command line), then changes one input for real and checks that the
next ``scan --quiet`` runs the full program and does what a scan does. The trees are made all at
once, so that the whole module waits out the margin once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO_ROOT, BootTree

from bootwatch import scanproof
from bootwatch.cli.parser import build_parser

pytestmark = pytest.mark.slow  # real command-line runs, and one wait of the racy margin

FULL_CLI = "bootwatch.cli.main"
# The full program's imports that the fast path exists to avoid.
AVOIDED = ("hashlib", "logging", "argparse", "dataclasses", "pathlib", "json", "ctypes", "tomllib", FULL_CLI)

CASES = ("kernel_same_size", "new_file", "removed_file", "entry_changed", "config_changed", "index_changed",
         "temp_file", "image_removed", "proof_fifo", "proof_symlink", "proof_garbage", "proof_torn",
         "proof_foreign", "proof_writable", "lock_held",
         "boot_mounted", "fast_imports", "proof_holds")


def imported(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line} - {"imported package"}


def scan(tree: BootTree, *extra: str, argv0: list[str] | None = None) -> tuple[int, str, str, set[str]]:
    """``scan --quiet`` as the kernel-install plugin runs it, under ``-X importtime``."""
    argv = [sys.executable, "-X", "importtime", *(argv0 or ["-m", "bootwatch"]), "--boot-dir", str(tree.boot),
            "--cache-dir", str(tree.cache), "scan", "--quiet", *extra]
    proc = subprocess.run(argv, env=tree.env(), cwd=tree.root, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    return proc.returncode, proc.stdout, "\n".join(lines), imported(proc.stderr)


def make_tree(root: Path, name: str) -> BootTree:
    (root / name).mkdir()
    config = root / name / "bootwatch.toml"
    track = "all" if name in ("new_file", "lock_held") else "referenced"
    config.write_text(f'[cache]\ntrack = "{track}"\n')
    tree = BootTree(root / name, config)
    for version in ("6.1.0", "6.2.0"):
        tree.write_kernel(version, size=64 * 1024)
        tree.write_entry(f"linux-{version}", linux=f"/vmlinuz-{version}", initrd=[f"/initramfs-{version}.img"])
    if name == "config_changed":
        tree.write_file("/vmlinuz-unreferenced", 4096)
    rc, out, err = tree.cli("scan")
    assert rc == 0, err
    return tree


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, BootTree]]:
    root = tmp_path_factory.mktemp("scanproof")
    made = {name: make_tree(root, name) for name in CASES}
    time.sleep(scanproof.RACY_MARGIN_NS / 1e9 + 0.2)
    for name, tree in made.items():
        rc, out, err, modules = scan(tree)
        assert (rc, out, err) == (0, "", ""), (name, err)
        assert FULL_CLI in modules  # no proof yet: this scan records it
        assert (tree.cache / scanproof.PROOF_NAME).is_file(), name
    yield made


def proven(trees: dict[str, BootTree], name: str) -> BootTree:
    """The tree of case ``name``, checked to be scanned by the fast path as it is."""
    tree = trees[name]
    rc, out, err, modules = scan(tree)
    assert (rc, out, err) == (0, "", "")
    assert FULL_CLI not in modules, "the proof did not hold before the change"
    return tree


def scanned_fully(tree: BootTree) -> tuple[int, str, str]:
    rc, out, err, modules = scan(tree)
    assert FULL_CLI in modules, "the fast path stood for a changed tree"
    return rc, out, err


def listed(tree: BootTree) -> dict[str, dict[str, object]]:
    rc, out, err = tree.cli("list", "--json")
    assert rc == 0, err
    return {row["path"]: row for row in json.loads(out)}


def test_the_proof_holds_and_the_fast_path_prints_and_writes_nothing(trees: dict[str, BootTree]) -> None:
    tree = trees["proof_holds"]
    before = {p.name: p.stat().st_mtime_ns for p in tree.cache.iterdir()}
    proven(trees, "proof_holds")
    proven(trees, "proof_holds")
    assert {p.name: p.stat().st_mtime_ns for p in tree.cache.iterdir()} == before


def test_a_kernel_replaced_with_the_same_size_is_cached(trees: dict[str, BootTree]) -> None:
    tree = proven(trees, "kernel_same_size")
    old = listed(tree)["/vmlinuz-6.1.0"]["image_id"]
    new = tree.write_file("/vmlinuz-6.1.0", 64 * 1024)
    assert scanned_fully(tree)[0] == 0
    assert listed(tree)["/vmlinuz-6.1.0"]["image_id"] == new != old
    assert (tree.cache / f"{new}.img").is_file()


def test_a_new_file_in_boot_is_cached(trees: dict[str, BootTree]) -> None:
    tree = proven(trees, "new_file")  # track = "all"
    sha1 = tree.write_file("/vmlinuz-6.3.0", 4096)
    assert scanned_fully(tree)[0] == 0
    assert listed(tree)["/vmlinuz-6.3.0"]["image_id"] == sha1


def test_a_removed_referenced_file_is_restored(trees: dict[str, BootTree]) -> None:
    tree = proven(trees, "removed_file")
    data = tree.path("/initramfs-6.2.0.img").read_bytes()
    tree.path("/initramfs-6.2.0.img").unlink()
    assert scanned_fully(tree)[0] == 0
    assert tree.path("/initramfs-6.2.0.img").read_bytes() == data


def test_a_changed_entry_is_read(trees: dict[str, BootTree]) -> None:
    tree = proven(trees, "entry_changed")
    sha1 = tree.write_file("/initramfs-6.2.0-extra.img", 4096)
    tree.write_entry("linux-6.2.0", linux="/vmlinuz-6.2.0",
                     initrd=["/initramfs-6.2.0.img", "/initramfs-6.2.0-extra.img"])
    assert scanned_fully(tree)[0] == 0
    assert listed(tree)["/initramfs-6.2.0-extra.img"]["image_id"] == sha1


def test_a_changed_configuration_is_read(trees: dict[str, BootTree]) -> None:
    tree = proven(trees, "config_changed")  # with a file no entry names, not cached
    assert "/vmlinuz-unreferenced" not in listed(tree)
    tree.config.write_text('[cache]\ntrack = "all"\n')
    assert scanned_fully(tree)[0] == 0
    assert listed(tree)["/vmlinuz-unreferenced"]["image_id"] == tree.sha1_of(tree.path("/vmlinuz-unreferenced"))


def test_an_index_changed_by_another_writer_is_read(trees: dict[str, BootTree]) -> None:
    tree = proven(trees, "index_changed")
    rc, out, err = tree.cli("remove", "--force", "/initramfs-6.1.0.img")  # another writer: the index changes
    assert rc == 0, err
    assert scanned_fully(tree)[0] == 0
    assert "/initramfs-6.1.0.img" in listed(tree)  # referenced: the scan caches it again


def test_a_temp_file_left_in_the_cache_is_removed(trees: dict[str, BootTree]) -> None:
    tree = proven(trees, "temp_file")
    temp = tree.cache / ".tmp" / ".bootwatch-tmp.left-by-a-kill"
    temp.parent.mkdir(exist_ok=True)
    temp.write_bytes(b"half an image")
    assert scanned_fully(tree)[0] == 0
    assert not temp.exists()


def test_an_image_removed_from_the_cache_is_copied_again(trees: dict[str, BootTree]) -> None:
    tree = proven(trees, "image_removed")
    image = tree.cache / f"{listed(tree)['/vmlinuz-6.2.0']['image_id']}.img"
    image.unlink()
    assert scanned_fully(tree)[0] == 0
    assert image.is_file()


@pytest.mark.parametrize("kind", ["fifo", "symlink", "garbage", "torn", "foreign", "writable"])
def test_no_proof_at_the_proof_name_is_trusted(trees: dict[str, BootTree], kind: str) -> None:
    tree = proven(trees, f"proof_{kind}")
    proof = tree.cache / scanproof.PROOF_NAME
    data = proof.read_bytes()
    proof.unlink()
    if kind == "fifo":
        os.mkfifo(proof)  # a reader that blocked on it would hang the scan: the timeout says so
    elif kind == "symlink":
        (tree.root / "elsewhere").write_bytes(data)
        proof.symlink_to(tree.root / "elsewhere")
    elif kind == "garbage":
        proof.write_bytes(os.urandom(4096))
    elif kind == "torn":
        proof.write_bytes(data[:len(data) // 2])
    else:  # the very proof, but someone else could have written it
        proof.write_bytes(data)
        if kind == "foreign":
            os.chown(proof, 4321, 4321)
        else:
            proof.chmod(0o666)
    assert scanned_fully(tree) == (0, "", "")


def test_no_proof_is_written_while_another_process_holds_the_lock(trees: dict[str, BootTree]) -> None:
    tree = proven(trees, "lock_held")
    (tree.cache / scanproof.PROOF_NAME).unlink()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               "fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
                               "print('locked', flush=True); time.sleep(60)", str(tree.cache / ".bootwatch.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        # track = "all": the scan's pass is the lock-free one (with "referenced" the full pass
        # waits for the holder, as it always has)
        rc, out, err, modules = scan(tree)
    finally:
        holder.kill()
        holder.wait()
    assert (rc, out, err) == (0, "", "")
    assert not (tree.cache / scanproof.PROOF_NAME).exists()


@pytest.mark.root
def test_a_filesystem_mounted_on_the_boot_directory_is_seen(trees: dict[str, BootTree]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mount)")
    tree = proven(trees, "boot_mounted")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tree.boot)], check=True)
    try:
        rc, out, err = scanned_fully(tree)
        # The full scan's own judgement: the entries are gone with the mount, nothing is taken away.
        assert rc == 0
        assert "references unknown" in err
    finally:
        subprocess.run(["umount", str(tree.boot)], check=True)


def test_the_fast_path_imports_nothing_of_the_full_program(trees: dict[str, BootTree]) -> None:
    tree = proven(trees, "fast_imports")
    baseline = imported(subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=tree.env(),
                                       capture_output=True, text=True, check=True).stderr)
    entry_points = [["-m", "bootwatch"]]
    script = Path(sys.executable).parent / "bootwatch"
    if script.is_file() and str(REPO_ROOT) in script.read_text(errors="replace") + str(Path(sys.prefix).resolve()):
        entry_points.append([str(script)])  # the console script of this checkout's install
    for argv0 in entry_points:
        rc, out, err, modules = scan(tree, argv0=argv0)
        assert (rc, out, err) == (0, "", "")
        assert not (modules - baseline) & set(AVOIDED), (argv0, sorted(modules - baseline))


# ------------------------------------------------------------------ the command line's one definition

ACCEPTED = [
    ["scan", "--quiet"],
    ["--config", "c.toml", "scan", "--quiet"],
    ["scan", "--quiet", "--config", "c.toml"],
    ["scan", "--config", "c.toml", "--quiet"],
    ["--boot-dir", "/b", "--cache-dir", "/c", "scan", "--quiet"],
    ["--boot-dir", "/b", "scan", "--cache-dir", "/c", "--quiet", "--config", "/etc/x.toml"],
    ["--cache-dir", "rel/cache", "scan", "--quiet", "--boot-dir", "b o o t"],
]

REFUSED = [
    [], ["scan"], ["list"], ["scan", "--json"], ["scan", "--quiet", "--json"], ["--quiet", "scan"],
    ["scan", "--quiet", "--quiet"], ["scan", "--qui"], ["scan", "--quiet", "extra"], ["run"],
    ["--config=c.toml", "scan", "--quiet"], ["scan", "--quiet", "--cache-dir=/c"],
    ["--config", "a", "scan", "--quiet", "--config", "b"], ["--config", "scan", "--quiet"],
    ["scan", "--quiet", "--config"], ["scan", "--quiet", "--boot-dir", ""], ["scan", "--quiet", "--", "x"],
    ["-h"], ["--version"], ["scan", "-h", "--quiet"], ["add", "scan", "--quiet"], ["scan", "scan", "--quiet"],
]


@pytest.mark.parametrize("argv", ACCEPTED, ids=" ".join)
def test_every_form_the_fast_path_takes_is_the_parsers(argv: list[str]) -> None:
    settings = scanproof.quiet_scan_settings(argv)
    assert settings is not None
    args = build_parser().parse_args(argv)
    assert (args.command, args.quiet, args.json) == ("scan", True, False)
    for option in ("config", "boot-dir", "cache-dir"):
        value = getattr(args, option.replace("-", "_"))
        assert (None if value is None else str(value)) == (None if option not in settings
                                                           else str(Path(settings[option])))


@pytest.mark.parametrize("argv", REFUSED, ids=lambda argv: " ".join(argv) or "(none)")
def test_every_other_form_goes_to_the_full_command_line(argv: list[str]) -> None:
    assert scanproof.quiet_scan_settings(argv) is None
