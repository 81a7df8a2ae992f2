"""check_image on real images built with the real tools: filesystems, initramfs chains, kernels."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import imagefactory
import pytest

from bootwatch.verify import ImageCheck, check_image
from bootwatch.verify.mount import detect_fstype, mounts_under

REPO = Path(__file__).resolve().parents[2]

needs_loop = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/dev/loop-control").exists(),
    reason="needs root and /dev/loop-control to loop-mount filesystem images")


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")])
    env.update(extra)
    return env


def losetup_lines(directory: Path) -> list:
    out = subprocess.run(["losetup", "-a"], check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(directory) in line]


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "run"
    yield path
    assert mounts_under(path) == [] if path.exists() else True


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return imagefactory.make_tree(tmp_path / "tree")


def build_fs(fstype: str, tmp_path: Path) -> Path:
    builder, tools = imagefactory.FS_BUILDERS[fstype]
    if not imagefactory.have(*tools):
        pytest.skip(f"{' and '.join(tools)} not installed")
    source = imagefactory.make_tree(tmp_path / f"src-{fstype}", symlink=fstype != "vfat")
    return builder(tmp_path / f"{fstype}.img", source)


# --- filesystems -------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("fstype", sorted(imagefactory.FS_BUILDERS))
def test_filesystem_type_is_detected_by_magic(fstype: str, tmp_path: Path) -> None:
    image = build_fs(fstype, tmp_path)
    renamed = image.rename(tmp_path / "vmlinuz-not-a-filesystem-name")
    assert detect_fstype(renamed) == fstype


@pytest.mark.root
@needs_loop
@pytest.mark.parametrize("fstype", sorted(imagefactory.FS_BUILDERS))
def test_filesystem_image_verifies(fstype: str, tmp_path: Path, runtime: Path) -> None:
    image = build_fs(fstype, tmp_path)
    result = check_image(image, runtime_dir=runtime)
    assert result.kind == "filesystem"
    if result.outcome == "skipped" and not imagefactory.kernel_supports(fstype):
        # A kernel without the driver is reported as skipped, with the reason, never as failed.
        assert f"no {fstype} driver" in result.message
        pytest.skip(f"the running kernel has no {fstype} driver")
    assert result.outcome == "ok", result.message
    # make_tree writes 4 regular files, 307200 + 6 + 5000 + 0 bytes.
    assert result.message == f"{fstype} filesystem: read 4 files, 312206 bytes"
    assert losetup_lines(tmp_path) == []


@pytest.mark.root
@needs_loop
@pytest.mark.parametrize("fstype,offset", [("ext4", 1024), ("squashfs", 12), ("erofs", 1036)])
def test_corrupt_superblock_fails_naming_the_image(fstype: str, offset: int, tmp_path: Path,
                                                   runtime: Path) -> None:
    image = build_fs(fstype, tmp_path)
    imagefactory.flip_bytes(image, offset, 8)
    result = check_image(image, runtime_dir=runtime)
    assert result.kind == "filesystem"
    assert result.outcome == "failed", result.message
    assert str(image) in result.message
    assert f"the {fstype} filesystem does not mount" in result.message
    assert losetup_lines(tmp_path) == []


@pytest.mark.root
@needs_loop
@pytest.mark.parametrize("fstype", ["ext4", "squashfs", "erofs"])
def test_truncated_filesystem_fails(fstype: str, tmp_path: Path, runtime: Path) -> None:
    image = build_fs(fstype, tmp_path)
    imagefactory.truncate_to(image, 0.5)
    result = check_image(image, runtime_dir=runtime)
    assert (result.kind, result.outcome) == ("filesystem", "failed"), result.message
    assert str(image) in result.message
    assert losetup_lines(tmp_path) == []


@pytest.mark.root
@needs_loop
def test_read_error_inside_the_filesystem_names_the_file(tmp_path: Path, runtime: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "big.txt").write_text("".join(f"line {i}\n" for i in range(200000)))
    image = imagefactory.build_squashfs(tmp_path / "data.img", source)
    # The first compressed data block follows the 96-byte superblock: damage it.
    imagefactory.flip_bytes(image, 4096, 64)
    result = check_image(image, runtime_dir=runtime)
    assert (result.kind, result.outcome) == ("filesystem", "failed"), result.message
    assert str(image) in result.message
    assert "/big.txt" in result.message
    assert "error" in result.message


@pytest.mark.root
@needs_loop
def test_filesystem_check_is_skipped_without_root(tmp_path: Path) -> None:
    shared = Path(tempfile.mkdtemp(prefix="bootwatch-nonroot-"))
    try:
        shared.chmod(0o755)
        image = imagefactory.build_ext4(shared / "fs.img", imagefactory.make_tree(tmp_path / "t"))
        image.chmod(0o644)
        script = textwrap.dedent(f"""
            import os
            from pathlib import Path
            from bootwatch.verify import check_image
            os.setgid(65534); os.setuid(65534)
            r = check_image(Path({str(image)!r}), runtime_dir=Path("/nonexistent/run"))
            print(r.kind, r.outcome, r.message)
        """)
        out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                             text=True, env=child_env()).stdout
        assert out.startswith("filesystem skipped not checked: needs root"), out
    finally:
        shutil.rmtree(shared)


@pytest.mark.root
@needs_loop
def test_timeout_gives_incomplete_and_unmounts(tmp_path: Path, runtime: Path) -> None:
    image = build_fs("ext4", tmp_path)
    result = check_image(image, runtime_dir=runtime, timeout=0)
    assert (result.kind, result.outcome) == ("filesystem", "incomplete")
    assert "gave up" in result.message
    assert mounts_under(runtime) == []
    assert losetup_lines(tmp_path) == []


@pytest.mark.slow
@pytest.mark.root
@needs_loop
def test_two_verifiers_at_once_use_their_own_devices(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from bootwatch.verify import check_image
        from bootwatch.verify.mount import mounted_image
        image, marker, runtime = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
        for _ in range(15):
            with mounted_image(image, runtime) as point:
                assert (point / "marker").read_text() == marker
            result = check_image(image, runtime_dir=runtime)
            assert result.outcome == "ok", result
        print("done")
    """)
    children = []
    for marker in ("alpha", "beta"):
        source = imagefactory.make_tree(tmp_path / f"tree-{marker}")
        (source / "marker").write_text(marker)
        image = imagefactory.build_ext4(tmp_path / f"{marker}.img", source)
        children.append(subprocess.Popen(
            [sys.executable, "-c", script, str(image), marker, str(tmp_path / "run")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()))
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert out.strip() == "done"
    assert mounts_under(tmp_path / "run") == []
    assert losetup_lines(tmp_path) == []


# --- initramfs ---------------------------------------------------------------------------------

def build_chain(tmp_path: Path, *methods: str, microcode: bool = True) -> Path:
    needed = [imagefactory.COMPRESSORS[m][0] for m in methods if m != "none"]
    if not imagefactory.have("cpio", *needed):
        pytest.skip(f"needs cpio and {', '.join(needed)}")
    work = tmp_path / ("w-" + "-".join(methods))
    work.mkdir()
    return imagefactory.build_initramfs(tmp_path / ("initrd-" + "-".join(methods)), work,
                                        methods, microcode=microcode)


@pytest.mark.parametrize("methods,expected", [
    (("gzip",), "cpio + gzip, 13 entries"),
    (("zstd",), "cpio + zstd, 13 entries"),
    (("xz",), "cpio + xz, 13 entries"),
    (("bzip2",), "cpio + bzip2, 13 entries"),
    (("lz4",), "cpio + lz4, 13 entries"),
    (("none", "gzip", "zstd"), "cpio + cpio + gzip + zstd, 29 entries"),
])
def test_initramfs_chain_verifies(methods: tuple, expected: str, tmp_path: Path) -> None:
    image = build_chain(tmp_path, *methods)
    assert check_image(image, runtime_dir=tmp_path / "run") == \
        ImageCheck("initramfs", "ok", f"initramfs: {expected}")


def test_compressed_initramfs_without_microcode_verifies(tmp_path: Path) -> None:
    image = build_chain(tmp_path, "gzip", microcode=False)
    result = check_image(image, runtime_dir=tmp_path / "run")
    assert result == ImageCheck("initramfs", "ok", "initramfs: gzip, 8 entries")


@pytest.mark.parametrize("methods", [("gzip",), ("zstd",), ("xz",)])
def test_initramfs_corrupt_in_the_middle_fails(methods: tuple, tmp_path: Path) -> None:
    image = build_chain(tmp_path, *methods)
    size = image.stat().st_size
    microcode_end = len(imagefactory.cpio_newc(imagefactory.microcode_tree(tmp_path / "u")))
    # Damage the compressed member, well after the microcode archive.
    imagefactory.flip_bytes(image, (microcode_end + size) // 2, 32)
    result = check_image(image, runtime_dir=tmp_path / "run")
    assert (result.kind, result.outcome) == ("initramfs", "failed"), result.message
    assert f"{methods[0]} archive at offset {microcode_end}" in result.message


def test_initramfs_truncated_fails(tmp_path: Path) -> None:
    image = build_chain(tmp_path, "none", "gzip")
    imagefactory.truncate_to(image, 0.8)
    result = check_image(image, runtime_dir=tmp_path / "run")
    assert (result.kind, result.outcome) == ("initramfs", "failed")
    assert "truncated" in result.message


def test_corrupt_microcode_header_fails_with_its_offset(tmp_path: Path) -> None:
    image = build_chain(tmp_path, "gzip")
    with open(image, "r+b") as f:  # the second header of the microcode cpio
        data = f.read()
        second = data.index(b"070701", 6)
        f.seek(second + 6)
        f.write(b"zzzzzzzz")
    result = check_image(image, runtime_dir=tmp_path / "run")
    assert result.outcome == "failed"
    assert f"corrupt cpio header at offset {second}" in result.message


def test_crc_cpio_checksum_mismatch_fails(tmp_path: Path) -> None:
    if not imagefactory.have("cpio"):
        pytest.skip("needs cpio")
    source = tmp_path / "src"
    source.mkdir()
    (source / "data").write_bytes(b"A" * 1000)
    archive = bytearray(imagefactory.cpio_newc(source, fmt="crc"))
    image = tmp_path / "initrd"
    image.write_bytes(bytes(archive))
    assert check_image(image, runtime_dir=tmp_path).outcome == "ok"
    archive[archive.index(b"A" * 1000) + 500] = ord("B")
    image.write_bytes(bytes(archive))
    result = check_image(image, runtime_dir=tmp_path)
    assert result.outcome == "failed"
    assert "checksum mismatch in cpio entry 'data'" in result.message


def test_junk_after_the_chain_fails(tmp_path: Path) -> None:
    image = build_chain(tmp_path, "gzip")
    with open(image, "ab") as f:
        f.write(b"\0" * 8 + b"JUNKJUNK")
    result = check_image(image, runtime_dir=tmp_path / "run")
    assert result.outcome == "failed"
    assert "junk at offset" in result.message


def test_zstd_missing_is_unchecked_not_failed(tmp_path: Path) -> None:
    image = build_chain(tmp_path, "zstd")
    script = textwrap.dedent(f"""
        from pathlib import Path
        from bootwatch.verify import check_image
        r = check_image(Path({str(image)!r}), runtime_dir=Path({str(tmp_path)!r}))
        print(r.kind, r.outcome, r.message, sep="|")
    """)
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         text=True, env=child_env(PATH=str(tmp_path / "empty-bin"))).stdout
    assert out.strip() == "initramfs|unchecked|not checked: zstd not installed"


# --- kernels -----------------------------------------------------------------------------------

def write(tmp_path: Path, data: bytes, name: str = "image") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_bzimage_verifies_and_truncated_fails(tmp_path: Path) -> None:
    data = imagefactory.bzimage()
    assert check_image(write(tmp_path, data), runtime_dir=tmp_path) == \
        ImageCheck("kernel", "ok", "x86 bzImage, boot protocol 2.15")
    result = check_image(write(tmp_path, data[:-512]), runtime_dir=tmp_path)
    assert (result.kind, result.outcome) == ("kernel", "failed")
    assert "truncated bzImage" in result.message


def test_pe_kernel_verifies_and_truncated_section_fails(tmp_path: Path) -> None:
    data = imagefactory.pe_image([(".text", os.urandom(3000)), (".data", os.urandom(1000))])
    assert check_image(write(tmp_path, data), runtime_dir=tmp_path) == \
        ImageCheck("kernel", "ok", "PE/COFF image, 2 sections")
    result = check_image(write(tmp_path, data[:-600]), runtime_dir=tmp_path)
    assert (result.kind, result.outcome) == ("kernel", "failed")
    assert "section '.data'" in result.message


def test_signed_pe_with_truncated_signature_fails(tmp_path: Path) -> None:
    data = imagefactory.pe_image([(".text", os.urandom(3000))], signature=os.urandom(700))
    assert check_image(write(tmp_path, data), runtime_dir=tmp_path).outcome == "ok"
    result = check_image(write(tmp_path, data[:-100]), runtime_dir=tmp_path)
    assert result.outcome == "failed" and "signature" in result.message


def test_uki_walks_its_initrd(tmp_path: Path) -> None:
    initrd = build_chain(tmp_path, "gzip").read_bytes()
    sections = [(".osrel", b"ID=test\n"), (".cmdline", b"quiet"),
                (".linux", imagefactory.bzimage()), (".initrd", initrd)]
    result = check_image(write(tmp_path, imagefactory.pe_image(sections)), runtime_dir=tmp_path)
    assert result == ImageCheck("uki", "ok", "UKI: PE/COFF image, sections .osrel .cmdline "
                                             ".linux .initrd; .initrd: cpio + gzip, 13 entries")
    broken = bytearray(initrd)
    broken[len(broken) // 2:len(broken) // 2 + 32] = bytes(32)
    sections[3] = (".initrd", bytes(broken))
    result = check_image(write(tmp_path, imagefactory.pe_image(sections)), runtime_dir=tmp_path)
    assert (result.kind, result.outcome) == ("uki", "failed")
    assert result.message.startswith(".initrd section: ")


def test_other_architectures_are_recognised_not_failed(tmp_path: Path) -> None:
    image = imagefactory.arm64_image()
    assert check_image(write(tmp_path, image), runtime_dir=tmp_path) == \
        ImageCheck("kernel", "unchecked", "not checked: arm64 Image (format recognised)")
    # Debian's arm64 vmlinuz is a gzip-compressed Image.
    assert check_image(write(tmp_path, gzip.compress(image)), runtime_dir=tmp_path) == \
        ImageCheck("kernel", "unchecked",
                   "not checked: gzip-compressed arm64 Image (format recognised)")
    elf = b"\x7fELF\x02\x01\x01" + bytes(200)
    assert check_image(write(tmp_path, elf), runtime_dir=tmp_path).outcome == "unchecked"


@pytest.mark.parametrize("data", [b"", b"hello world\n" * 100, os.urandom(70000)],
                         ids=["empty", "text", "random"])
def test_unknown_content_is_unchecked(data: bytes, tmp_path: Path) -> None:
    result = check_image(write(tmp_path, data), runtime_dir=tmp_path)
    assert (result.kind, result.outcome) == ("unknown", "unchecked")


def test_kind_comes_from_content_not_name(tmp_path: Path) -> None:
    initrd = build_chain(tmp_path, "gzip")
    named = initrd.rename(tmp_path / "vmlinuz-6.1.0")
    assert check_image(named, runtime_dir=tmp_path).kind == "initramfs"
    kernel = write(tmp_path, imagefactory.bzimage(), "initrd.img-6.1.0")
    assert check_image(kernel, runtime_dir=tmp_path).kind == "kernel"


def test_unreadable_path_fails(tmp_path: Path) -> None:
    result = check_image(tmp_path / "missing", runtime_dir=tmp_path)
    assert result.outcome == "failed"
    assert str(tmp_path / "missing") in result.message


def test_result_as_json() -> None:
    result = ImageCheck("initramfs", "failed", "gzip archive at offset 4: truncated")
    assert result.to_json() == {"kind": "initramfs", "outcome": "failed",
                                "message": "gzip archive at offset 4: truncated"}
    assert result.failed
    with pytest.raises(ValueError):
        ImageCheck("kernel", "broken", "x")
