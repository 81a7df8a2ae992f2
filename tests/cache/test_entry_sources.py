"""The cache works from every entry source: grub.cfg, UKIs and BLS entries on the ESP.

The grub.cfg files are the real grub-mkconfig's (tests/realboot/grub_mkconfig.py, both Debian
layouts) beside the real kernel packages' files they were generated for; the UKIs are built as
ukify builds them (tests/realboot/uki_build.py). The ESP is a real filesystem of its own
(tmpfs, loop-mounted ext4, and vfat where this kernel has it), mounted outside the boot
directory, and really unmounted. Every command is the real command line, as a child process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from realboot.grub_mkconfig import Layout, Unavailable, cached_kernels, missing_prerequisite, run_grub_mkconfig

pytestmark = pytest.mark.slow

GRUB_MISSING = missing_prerequisite()


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def umount(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=True, capture_output=True)


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def has_vfat() -> bool:
    with contextlib.suppress(OSError):
        if "vfat" in Path("/proc/filesystems").read_text().split():
            return shutil.which("mkfs.vfat") is not None
    return False


@contextlib.contextmanager
def filesystem(kind: str, where: Path, scratch: Path) -> Iterator[None]:
    """A real filesystem of ``kind`` mounted at ``where`` (loop devices for ext4 and vfat)."""
    if kind == "tmpfs":
        mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where))
    else:
        image = scratch / f"{kind}.img"
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        mkfs = ["mkfs.ext4", "-q", "-F"] if kind == "ext4" else ["mkfs.vfat"]
        subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
        mount("-o", "loop", str(image), str(where))
    try:
        yield
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            umount(where)


def esp_config(tree, esp: Path, extra: str = "") -> None:
    tree.config.write_text(f'[entries]\nesp = "{esp}"\n{extra}')


def esp_key(tree, esp_path: str) -> str:
    """The cache key of the file ``esp_path`` (from the ESP's root) of the ESP at ``<root>/efi``."""
    return "/" + os.path.relpath(str(tree.root / "efi") + esp_path, tree.boot)


# ------------------------------------------------------------------------------------ grub.cfg


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory):
    if GRUB_MISSING is not None or os.geteuid() != 0:
        pytest.skip(f"real grub-mkconfig: {GRUB_MISSING or 'needs root'}")
    try:
        kernels = cached_kernels(2)
    except Unavailable as e:
        pytest.skip(f"real grub-mkconfig: {e}")
    base = tmp_path_factory.mktemp("grub-mkconfig-cache")
    result = {layout: run_grub_mkconfig(layout, kernels, base / layout.value) for layout in Layout}
    for g in result.values():
        for image in g.grub_cfg.parent.parent.glob("*.img"):
            image.unlink()
    return result


def grub_boot(tree, g) -> set[str]:
    """The boot directory of ``tree`` as grub-mkconfig saw /boot: the real kernel packages' files,
    their initramfs and microcode, and the grub.cfg generated for them. Returns the keys of the
    files grub.cfg names (its linux and initrd lines, /boot/ stripped on the root filesystem)."""
    payload = g.grub_cfg.parent.parent / "payload"
    for file in payload.iterdir():
        shutil.copyfile(file, tree.boot / file.name)
    (tree.boot / "grub").mkdir()
    shutil.copyfile(g.grub_cfg, tree.boot / "grub" / "grub.cfg")
    named: set[str] = set()
    for line in g.grub_cfg.read_text().splitlines():
        words = line.split()
        if words and words[0] in ("linux", "initrd"):
            named.update(w.removeprefix("/boot") for w in (words[1:2] if words[0] == "linux" else words[1:]))
    return named


@pytest.mark.parametrize("layout", list(Layout))
def test_scan_caches_exactly_what_a_real_grub_cfg_names(boot_tree, generated, layout: Layout) -> None:
    tree = boot_tree
    shutil.rmtree(tree.entries.parent)  # a GRUB host: no BLS entries at all
    named = grub_boot(tree, generated[layout])
    versions = [k.version for k in generated[layout].kernels]
    assert named == {"/amd-ucode.img"} | {f"/{f}-{v}" for v in versions for f in ("vmlinuz", "initrd.img")}
    rc, out, err = tree.cli("scan")
    assert rc == 0 and "Traceback" not in err, out + err
    rows = tree.list_json()
    assert set(rows) == named, "cached other files than grub.cfg names, or one twice"
    # The simple entry and the advanced one name the newest kernel; the recovery entry too.
    assert rows[f"/vmlinuz-{versions[0]}"]["count"] == 3 and rows["/amd-ucode.img"]["count"] == 5
    for key, row in rows.items():
        assert row["image_id"] == sha1(tree.path(key))

    # The kernel package removed, grub.cfg not yet regenerated: still named, so restored.
    tree.path(f"/vmlinuz-{versions[1]}").unlink()
    rc, out, err = tree.cli("scan", "--json")
    assert rc == 0 and json.loads(out)["restored"] == [f"/vmlinuz-{versions[1]}"], out + err
    # grub.cfg regenerated without it (as update-grub in the package's postrm): no longer named,
    # so clean uncaches it and takes the restored copy away.
    cfg = tree.boot / "grub" / "grub.cfg"
    cfg.write_text(without_kernel(cfg.read_text(), versions[1]))
    report = tree.cli_json("clean", "--json")
    assert sorted(report["uncached_paths"]) == sorted([f"/vmlinuz-{versions[1]}", f"/initrd.img-{versions[1]}"])
    assert not tree.path(f"/vmlinuz-{versions[1]}").exists(), "a restored copy outlived its entries"


def without_kernel(text: str, version: str) -> str:
    """``text`` without the menuentry blocks of ``version`` (what grub-mkconfig writes once the
    kernel is gone)."""
    out: list[str] = []
    skipping: str | None = None  # the indentation of the block being dropped
    for line in text.splitlines(keepends=True):
        stripped = line.lstrip("\t ")
        indent = line[:len(line) - len(stripped)]
        if skipping is None and stripped.startswith("menuentry ") and f"Linux {version}" in stripped:
            skipping = indent
            continue
        if skipping is not None:
            if indent == skipping and stripped.startswith("}"):
                skipping = None
            continue
        out.append(line)
    assert version not in "".join(line for line in out if line.lstrip().startswith(("linux", "initrd")))
    return "".join(out)


@pytest.fixture
def boot_partition(boot_tree, needs_root) -> Iterator[Path]:
    """A tmpfs standing for the boot partition, bind-mounted on the boot directory; it stays
    mounted elsewhere, so its files survive an unmount of the boot directory, as a partition's would."""
    part = boot_tree.root / "partition"
    part.mkdir()
    mount("-t", "tmpfs", "-o", "size=256m", "tmpfs", str(part))
    try:
        mount("--bind", str(part), str(boot_tree.boot))
        try:
            yield part
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                umount(boot_tree.boot)
    finally:
        umount(part)


def test_an_unmounted_boot_on_a_grub_host_uncaches_and_forgets_nothing(boot_tree, generated, boot_partition) -> None:
    """/boot unmounted takes grub.cfg with it: that is no host without entries. clean refuses
    (also with --force), scan restores nothing onto the empty mount point and uncaches nothing."""
    tree = boot_tree
    named = grub_boot(tree, generated[Layout.SEPARATE_BOOT])
    assert tree.cli("scan")[0] == 0
    kernel = next(k for k in sorted(named) if k.startswith("/vmlinuz-"))
    tree.path(kernel).unlink()  # MISSING, still named: the cache holds its only copy
    assert tree.cli("scan")[0] == 0 and tree.path(kernel).is_file()
    tree.path(kernel).unlink()
    (tree.boot / f".{kernel[1:]}.boomrestored").unlink()
    index_before, images_before = tree.index_bytes(), tree.images_on_disk()

    umount(tree.boot)
    for args in (("clean",), ("clean", "--force")):
        rc, out, err = tree.cli(*args)
        line = tree.assert_clean_error(rc, err, names=[str(tree.boot / "grub" / "grub.cfg")])
        assert "does not exist" in line and "nothing was cleaned" in line
    rc, out, err = tree.cli("scan", "--json")
    assert rc == 0 and json.loads(out)["references_unknown"], out + err
    rc, out, err = tree.cli("remove", kernel)
    assert rc == 1 and "may be referenced" in err, out + err
    assert not tree.path(kernel).exists(), "restored onto the empty mount point"
    assert tree.index_bytes() == index_before and tree.images_on_disk() == images_before

    mount("--bind", str(boot_partition), str(tree.boot))
    rc, out, err = tree.cli("clean", "--json")
    assert rc == 0 and json.loads(out)["uncached_paths"] == [], out + err
    assert tree.cli("restore", kernel)[0] == 0 and sha1(tree.path(kernel)) == tree.list_json()[kernel]["image_id"]


# ------------------------------------------------------------------------------------ the ESP


@pytest.fixture(params=["tmpfs", "ext4", "vfat"])
def esp(request, boot_tree, needs_root) -> Iterator[Path]:
    """A real ESP filesystem mounted at ``<root>/efi``, outside the boot directory."""
    if request.param == "vfat" and not has_vfat():
        pytest.skip("this kernel has no vfat (or mkfs.vfat is missing)")
    where = boot_tree.root / "efi"
    where.mkdir()
    with filesystem(request.param, where, boot_tree.root):
        esp_config(boot_tree, where)
        yield where


def write_esp_entry(esp: Path, name: str, version: str) -> dict[str, bytes]:
    """A BLS entry on the ESP (paths from the ESP's root, as kernel-install writes them there)
    and its kernel and initrd: {path on the ESP: content}."""
    files = {f"/{name}/{version}/linux": os.urandom(3000), f"/{name}/{version}/initrd": os.urandom(2000)}
    for path, content in files.items():
        (esp / path[1:]).parent.mkdir(parents=True, exist_ok=True)
        (esp / path[1:]).write_bytes(content)
    (esp / "loader" / "entries").mkdir(parents=True, exist_ok=True)
    linux, initrd = files
    (esp / "loader" / "entries" / f"{name}-{version}.conf").write_text(
        f"title {name} {version}\nversion {version}\nlinux {linux}\ninitrd {initrd}\n")
    return files


def test_esp_entries_are_cached_restored_and_taken_away_on_the_esp(boot_tree, esp: Path) -> None:
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_entry("boot", linux="/vmlinuz-1.0", initrd=["/initramfs-1.0.img"])
    files = {**write_esp_entry(esp, "arch", "6.1"), **write_esp_entry(esp, "arch", "6.2")}
    rc, out, err = tree.cli("scan")
    assert rc == 0, out + err
    rows = tree.list_json()
    keys = {esp_key(tree, p): p for p in files}
    assert all(k.startswith("/../efi/") for k in keys)
    assert set(rows) == {"/vmlinuz-1.0", "/initramfs-1.0.img", *keys}
    for key, path in keys.items():
        assert rows[key]["image_id"] == hashlib.sha1(files[path]).hexdigest() and rows[key]["count"] == 1
        assert rows[key]["state"] == "CACHED"

    # The kernel removed from the ESP, its entry kept: restored there, with its marker beside it.
    kernel = "/arch/6.1/linux"
    (esp / kernel[1:]).unlink()
    report = tree.cli_json("scan", "--json")
    assert report["restored"] == [esp_key(tree, kernel)]
    assert (esp / kernel[1:]).read_bytes() == files[kernel]
    assert (esp / "arch/6.1/.linux.boomrestored").is_file()
    assert tree.list_json()[esp_key(tree, kernel)]["state"] == "RESTORED"
    assert tree.cli("verify")[0] == 0

    # Its entry removed too: the restored copy is taken away again, the marker with it.
    (esp / "loader/entries/arch-6.1.conf").unlink()
    report = tree.cli_json("scan", "--json")
    assert report["unrestored"] == [esp_key(tree, kernel)]
    assert not (esp / kernel[1:]).exists() and not (esp / "arch/6.1/.linux.boomrestored").exists()
    report = tree.cli_json("clean", "--json")
    assert sorted(report["uncached_paths"]) == sorted(esp_key(tree, p) for p in files if "6.1" in p)
    # A key typed on the command line, or the file's own name on the ESP: the same path.
    assert tree.cli("remove", "--force", str(esp / "arch/6.2/initrd"))[0] == 0
    assert esp_key(tree, "/arch/6.2/initrd") not in tree.list_json()


def test_an_unmounted_esp_uncaches_forgets_and_restores_nothing(boot_tree, esp: Path) -> None:
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_entry("boot", linux="/vmlinuz-1.0")
    files = {**write_esp_entry(esp, "arch", "6.1"), **write_esp_entry(esp, "arch", "6.2")}
    assert tree.cli("scan")[0] == 0
    kernel = "/arch/6.1/linux"
    (esp / kernel[1:]).unlink()
    assert tree.cli("scan")[0] == 0 and (esp / kernel[1:]).is_file()  # restored, and recorded as such
    index_before, images_before = tree.read_index(), tree.images_on_disk()

    umount(esp)  # the ESP's mount point is now an empty directory of the parent filesystem
    rc, out, err = tree.cli("clean")
    line = tree.assert_clean_error(rc, err, names=[str(esp / "loader" / "entries")])
    assert "does not exist" in line and "nothing was cleaned" in line
    rc, out, err = tree.cli("scan", "--json")
    assert rc == 0, out + err
    report = json.loads(out)
    assert report["references_unknown"] and not report["restored"] and not report["missing"], report
    rc, out, err = tree.cli("restore", esp_key(tree, kernel))
    assert rc == 1 and "mount the ESP" in err, out + err
    assert list(esp.iterdir()) == [], "wrote onto the unmounted ESP's mount point"
    assert tree.read_index() == index_before and tree.images_on_disk() == images_before
    assert len(files) == 4


# ------------------------------------------------------------------------------------ hostile keys


def test_a_hostile_esp_key_in_the_index_is_never_read_or_written(boot_tree) -> None:
    """Keys starting with /.. are valid in the index (ESP files), but one that does not land
    inside the ESP is refused wherever it is resolved: nothing outside is read, cached or written."""
    tree = boot_tree
    esp = tree.root / "efi"
    (esp / "EFI").mkdir(parents=True)
    esp_config(tree, esp, '[cache]\ntrack = "all"\n')
    victim_dir = tree.root / "victim"
    victim_dir.mkdir()
    secret = victim_dir / "shadow"
    secret.write_bytes(b"root:secret\n")
    image = os.urandom(64)
    image_id = hashlib.sha1(image).hexdigest()
    tree.cache.mkdir(mode=0o700)
    tree.image(image_id).write_bytes(image)
    # Outside the ESP: an existing file, a missing one (a restore would write it), and the first
    # again spelled another way than the inventory writes ESP keys.
    hostile = ["/../victim/shadow", "/../victim/gone", "/../../" + tree.root.name + "/victim/shadow"]
    meta = {"path_mode": 0o104755, "path_uid": 0, "path_gid": 0, "path_attrs": {}}
    tree.index_file.write_text(json.dumps({"index": {k: [image_id] for k in hostile},
                                           "paths": {k: dict(meta) for k in hostile},
                                           "images": {image_id: {"image_ts": 1}}}))
    (tree.entries / "evil.conf").write_text("linux /vmlinuz-1\n")
    tree.write_file("/vmlinuz-1")
    before = {p.name: p.read_bytes() for p in victim_dir.iterdir()}
    for args in (("list",), ("list", "--json"), ("scan",), ("verify",), ("clean", "--force"), ("fsck",)):
        rc, out, err = tree.cli(*args)
        assert "Traceback" not in err, (args, err)
    for key in hostile:
        for command in ("restore", "add"):
            rc, out, err = tree.cli(command, key)
            assert rc in (1, 2) and "outside" in err, (command, key, out, err)
    assert {p.name: p.read_bytes() for p in victim_dir.iterdir()} == before, "wrote outside the boot directory"
    assert hashlib.sha1(secret.read_bytes()).hexdigest() not in tree.images_on_disk(), "cached a file outside"
    assert not list(victim_dir.glob(".*")), "a marker or temp file outside the boot directory and the ESP"


# ------------------------------------------------------------------------------------ UKIs


def build(tree, out: Path) -> Path:
    from realboot.uki_build import build_uki, initramfs_for, missing_tool
    if missing_tool() is not None:
        pytest.skip(f"UKI build: {missing_tool()}")
    try:
        kernel = cached_kernels(1)[0]
    except Unavailable as e:
        pytest.skip(f"real kernel package: {e}")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = tree.root / f"uki-{out.stem}"
    work.mkdir()
    return build_uki(out, kernel=kernel.boot / f"vmlinuz-{kernel.version}", initrd=initramfs_for(kernel, work),
                     osrel=b'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n',
                     cmdline=b"root=/dev/vda1 ro", uname=kernel.version.encode())


def test_ukis_in_the_boot_directory_and_on_the_esp_are_their_own_entries(boot_tree) -> None:
    """A UKI names itself: cached under its key (on the ESP, a /../ key); removed, it is not
    restored, since its entry went with it (restoring it would bring back an entry someone removed)."""
    if GRUB_MISSING is not None:
        pytest.skip(f"real kernel package: {GRUB_MISSING}")
    tree = boot_tree
    esp = tree.root / "efi"
    esp.mkdir()
    esp_config(tree, esp)
    in_boot = build(tree, tree.boot / "EFI" / "Linux" / "debian.efi")
    on_esp = build(tree, esp / "EFI" / "Linux" / "debian-esp.efi")
    on_esp.write_bytes(on_esp.read_bytes() + b"\0")  # another image (a signature appended, say)
    rc, out, err = tree.cli("scan")
    assert rc == 0, out + err
    rows = tree.list_json()
    keys = {"/EFI/Linux/debian.efi": in_boot, esp_key(tree, "/EFI/Linux/debian-esp.efi"): on_esp}
    assert set(rows) == set(keys)
    for key, file in keys.items():
        assert rows[key]["count"] == 1 and rows[key]["image_id"] == sha1(file)
    on_esp.unlink()
    report = tree.cli_json("scan", "--json")
    assert report["restored"] == [] and report["missing"] == [esp_key(tree, "/EFI/Linux/debian-esp.efi")]
    assert not on_esp.exists()
    assert tree.cli_json("clean", "--json")["uncached_paths"] == [esp_key(tree, "/EFI/Linux/debian-esp.efi")]


# ------------------------------------------------------------------------------------ Debian's symlinks


@pytest.mark.parametrize("link_in_boot", [False, True], ids=["links-in-root", "link_in_boot"])
def test_debians_kernel_symlinks_are_never_cached_as_files(boot_tree, generated, link_in_boot: bool) -> None:
    """Debian's /vmlinuz, /initrd.img and their .old (in /, or in /boot with link_in_boot) point at
    the files grub.cfg names: each of those is cached once, by its own name; the links never."""
    tree = boot_tree
    named = grub_boot(tree, generated[Layout.BOOT_ON_ROOT])
    versions = [k.version for k in generated[Layout.BOOT_ON_ROOT].kernels]
    where = tree.boot if link_in_boot else tree.root
    target = "" if link_in_boot else "boot/"
    for name, file, version in (("vmlinuz", "vmlinuz", versions[0]), ("vmlinuz.old", "vmlinuz", versions[1]),
                                ("initrd.img", "initrd.img", versions[0]),
                                ("initrd.img.old", "initrd.img", versions[1])):
        (where / name).symlink_to(f"{target}{file}-{version}")
    rc, out, err = tree.cli("scan")
    assert rc == 0, out + err
    rows = tree.list_json()
    assert set(rows) == named
    assert len({row["image_id"] for row in rows.values()}) == len(rows)
    # The newest kernel removed (its package's postrm repoints the links later): restored at its
    # own name, the link left as it is.
    tree.path(f"/vmlinuz-{versions[0]}").unlink()
    assert tree.cli_json("scan", "--json")["restored"] == [f"/vmlinuz-{versions[0]}"]
    assert os.path.islink(where / "vmlinuz") and (where / "vmlinuz").resolve() == tree.path(f"/vmlinuz-{versions[0]}")
