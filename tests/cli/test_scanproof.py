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
from conftest import REPO_ROOT, BootTree, subprocess_env

from bootwatch import scanproof
from bootwatch.cache import session
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
    ["scan", "--quiet", "--no-restore"], ["scan", "--no-restore", "--quiet"],
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


# Races and aliases found in review: each case is a scan whose inputs change in a way the
# proof must not vouch for.


def _imported_review(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def _scan(tree: BootTree, cwd: Path, env: dict[str, str]) -> tuple[int, str, str, bool]:
    """scan --quiet; returns (rc, out, err-without-importtime, fast path taken)."""
    argv = [sys.executable, "-X", "importtime", "-m", "bootwatch", "--boot-dir", str(tree.boot),
            "--cache-dir", str(tree.cache), "scan", "--quiet"]
    p = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    err = "\n".join(line for line in p.stderr.splitlines() if not line.startswith("import time:"))
    return p.returncode, p.stdout, err, FULL_CLI not in _imported_review(p.stderr)


def _fresh_tree(root: Path, track: str = "all") -> BootTree:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "bootwatch.toml"
    config.write_text(f'[cache]\ntrack = "{track}"\n')
    tree = BootTree(root, config)
    tree.write_kernel("6.1.0", size=4096)
    tree.write_entry("linux-6.1.0", linux="/vmlinuz-6.1.0", initrd=["/initramfs-6.1.0.img"])
    rc, out, err = tree.cli("scan")
    assert rc == 0, err
    return tree


def test_relative_BOOTWATCH_CONFIG_is_keyed_by_its_text_not_by_the_file_it_names(tmp_path: Path) -> None:
    """The key holds $BOOTWATCH_CONFIG verbatim; load_config opens it relative to the cwd."""
    tree = _fresh_tree(tmp_path / "t", track="referenced")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "bw.toml").write_text('[cache]\ntrack = "referenced"\n')
    (b / "bw.toml").write_text('[cache]\ntrack = "all"\n')
    tree.write_file("/vmlinuz-unreferenced", 4096)  # cached only with track = "all"
    time.sleep(scanproof.RACY_MARGIN_NS / 1e9 + 0.3)
    env = subprocess_env(None, {"BOOTWATCH_CONFIG": "bw.toml"})
    rc, out, err, fast = _scan(tree, a, env)  # full scan, records the proof (config a/bw.toml)
    assert (rc, out, err, fast) == (0, "", "", False)
    assert (tree.cache / scanproof.PROOF_NAME).is_file()
    # Same environment text, other working directory: the full program reads b/bw.toml
    # (track = "all") and caches /vmlinuz-unreferenced.
    rc, out, err, fast = _scan(tree, b, env)
    assert not fast, "fast path stood for a scan that reads another configuration file"
    assert (rc, out, err) == (0, "", "")
    assert "/vmlinuz-unreferenced" in (tree.cache / "cacheindex.json").read_text()


def _in_process_scan(tree: BootTree, monkeypatch: pytest.MonkeyPatch, between) -> None:
    """scan --quiet in this process, running ``between()`` right after the proof's stable()
    check (a concurrent writer's timing), before encode() observes the inputs."""
    from bootwatch.cli.main import main
    real_stable = scanproof.stable

    def stable_then_change(records, started_ns):
        ok = real_stable(records, started_ns)
        between()
        return ok

    monkeypatch.setattr(scanproof, "stable", stable_then_change)
    monkeypatch.setenv("BOOTWATCH_CONFIG", str(tree.config))
    rc = main(["--boot-dir", str(tree.boot), "--cache-dir", str(tree.cache), "scan", "--quiet"])
    assert rc == 0


def test_a_change_between_stable_and_encode_is_recorded_as_proved(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """stable() and encode() are two observations: encode() records what stable() never checked."""
    tree = _fresh_tree(tmp_path / "t", track="all")
    time.sleep(scanproof.RACY_MARGIN_NS / 1e9 + 0.3)
    _in_process_scan(tree, monkeypatch, lambda: tree.write_file("/vmlinuz-6.9.0", 4096))
    # The pass never saw /vmlinuz-6.9.0; a full scan (track = "all") would cache it.
    argv = ["--boot-dir", str(tree.boot), "--cache-dir", str(tree.cache), "scan", "--quiet"]
    fast = scanproof.fast_scan(argv, {**os.environ, "BOOTWATCH_CONFIG": str(tree.config)})
    full = subprocess.run([sys.executable, "-c", "import sys; from bootwatch.cli.main import main; sys.exit(main())",
                           *argv[:-1], "--json"], env=subprocess_env(tree.config), capture_output=True, text=True)
    assert '"/vmlinuz-6.9.0"' in full.stdout, full.stdout  # what the full program does (cached)
    assert not fast, "the proof vouches for a new kernel that no pass has seen"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount)")
def test_an_unmount_between_pass_and_proof_is_recorded_as_proved(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Mounting changes no timestamp: stable() cannot see it."""
    under = tmp_path / "t" / "boot"
    under.mkdir(parents=True)
    (tmp_path / "t" / "bootwatch.toml").write_text("")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(under)], check=True)
    try:
        tree = _fresh_tree(tmp_path / "t", track="all")
        time.sleep(scanproof.RACY_MARGIN_NS / 1e9 + 0.3)
        # A pass on the mounted boot partition; the partition is unmounted before the proof is taken.
        _in_process_scan(tree, monkeypatch,
                         lambda: os.path.ismount(under) and subprocess.run(["umount", str(under)], check=True))
    finally:
        subprocess.run(["umount", str(under)], capture_output=True)
    assert not os.path.ismount(under)
    env = subprocess_env(tree.config)
    rc, out, err, fast = _scan(tree, tree.root, env)
    # The full scan says the entries are gone ("references unknown"); the fast path says nothing.
    full = subprocess.run([sys.executable, "-c", "import sys; from bootwatch.cli.main import main; sys.exit(main())",
                           "--boot-dir", str(tree.boot), "--cache-dir", str(tree.cache), "scan", "--quiet"],
                          env=env, cwd=tree.root, capture_output=True, text=True, timeout=120)
    assert "references unknown" in full.stderr, full.stderr  # what the full program says
    assert not fast, f"fast path hid an unmounted boot partition (rc {rc}, err {err!r})"


def test_the_directory_of_a_symlinked_boot_files_target_is_not_recorded(tmp_path: Path) -> None:
    """The full pass looks for leftovers of a killed restore in boot_file(path).parent
    (BootCache._restore_directories); with track = "referenced" that directory is in no record."""
    root = tmp_path / "t"
    root.mkdir()
    config = root / "bootwatch.toml"
    config.write_text('[cache]\ntrack = "referenced"\n')
    tree = BootTree(root, config)
    tree.write_file("/sub/vmlinuz-real", 4096)
    tree.write_file("/initramfs-6.1.0.img", 4096)
    tree.path("/vmlinuz-6.1.0").symlink_to("sub/vmlinuz-real")
    tree.write_entry("linux-6.1.0", linux="/vmlinuz-6.1.0", initrd=["/initramfs-6.1.0.img"])
    rc, out, err = tree.cli("scan")
    assert rc == 0, err
    time.sleep(scanproof.RACY_MARGIN_NS / 1e9 + 0.3)
    env = subprocess_env(tree.config)
    assert _scan(tree, root, env) == (0, "", "", False)
    assert _scan(tree, root, env) == (0, "", "", True)
    leftover = tree.boot / "sub" / ".bootwatch-restore.left-by-a-kill"
    leftover.write_bytes(b"half a kernel")
    rc, out, err, fast = _scan(tree, root, env)
    assert not leftover.exists()  # removed by the full program
    assert not fast, "fast path left a killed restore's temp file that the full scan removes"


def test_an_intermediate_symlink_retargeted_after_the_pass_is_not_seen(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """--boot-dir bootlink -> mid -> boot. mid is in no record and retargeting it bumps no
    recorded timestamp, so even a proof whose stability is judged from the recorded observation
    itself vouches for a boot directory the pass never walked."""
    import shutil

    from bootwatch.cli.main import main
    root = tmp_path / "t"
    root.mkdir()
    config = root / "bootwatch.toml"
    config.write_text('[cache]\ntrack = "all"\n')
    tree = BootTree(root, config)
    tree.write_kernel("6.1.0", size=4096)
    tree.write_entry("linux-6.1.0", linux="/vmlinuz-6.1.0", initrd=["/initramfs-6.1.0.img"])
    links = tmp_path / "links"  # (t/ itself is recorded: the absent drop-in dir's parent)
    links.mkdir()
    (links / "mid").symlink_to(root / "boot")
    (links / "bootlink").symlink_to(links / "mid")
    assert tree.cli("scan", boot=links / "bootlink")[0] == 0
    shutil.copytree(root / "boot", root / "other")
    (root / "other" / "vmlinuz-6.9.0").write_bytes(os.urandom(4096))
    time.sleep(scanproof.RACY_MARGIN_NS / 1e9 + 0.3)
    real_records = session.scan_proof_records

    def retarget_then_records(*args, **kwargs):
        (links / "mid").unlink()
        (links / "mid").symlink_to(root / "other")
        return real_records(*args, **kwargs)

    monkeypatch.setattr(session, "scan_proof_records", retarget_then_records)
    monkeypatch.setenv("BOOTWATCH_CONFIG", str(config))
    argv = ["--boot-dir", str(links / "bootlink"), "--cache-dir", str(tree.cache), "scan", "--quiet"]
    assert main(argv) == 0
    fast = scanproof.fast_scan(argv, dict(os.environ))
    full = subprocess.run([sys.executable, "-c", "import sys; from bootwatch.cli.main import main; sys.exit(main())",
                           *argv[:-1], "--json"], env=subprocess_env(config), capture_output=True, text=True)
    assert full.returncode == 0 and ('"/vmlinuz-6.9.0"' in full.stdout or full.stderr), (full.stdout, full.stderr)
    assert not fast, "the proof vouches for a boot directory (other/) that no pass has walked"


def test_an_interrupt_in_the_fast_path_exits_130_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the proof is read: exit 130 quietly, as the full command line does."""
    from bootwatch.cli import entry

    def interrupted() -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(scanproof, "main", interrupted)
    assert entry.main() == 130
