"""Image facts (bootwatch.health.facts) from real images: Debian's cloud kernels, the initramfs
images Debian's own mkinitramfs makes for them, UKIs built from those with systemd's stub, and a
truncated initramfs and a corrupted kernel made from the real ones.

What is read is observed, not inferred: a Python audit hook records every ``open`` of an image
path, and ``/proc/self/io`` (``rchar``) counts the bytes read, in this process and in new ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, subprocess_env
from realboot.grub_mkconfig import Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import mkinitramfs_image
from realboot.uki_build import build_uki, missing_tool

from bootwatch import scanproof
from bootwatch.health.facts import FACTS_NAME, MAX_FACTS_SIZE, FactsMemo, ImageFacts
from bootwatch.verify import ImageKind, Outcome

pytestmark = [pytest.mark.slow, pytest.mark.root]  # real images, aged past the racy margin once

OSREL = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


class _Opens:
    """Every path opened while :attr:`paths` is a list (a Python audit hook cannot be removed)."""

    paths: list[str] | None = None

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and self.paths is not None and isinstance(args[0], (str, bytes, os.PathLike)):
            self.paths.append(os.path.abspath(os.fsdecode(args[0])))


_OPENS = _Opens()
sys.addaudithook(_OPENS.hook)


@contextmanager
def opens_of(images: list[Path]) -> Iterator[list[str]]:
    """The opens of ``images`` within the block (filled in when it ends)."""
    wanted = {str(p) for p in images}
    _OPENS.paths = []
    seen: list[str] = []
    try:
        yield seen
    finally:
        seen += [p for p in _OPENS.paths if p in wanted]
        _OPENS.paths = None


def rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@dataclass(frozen=True)
class Images:
    directory: Path
    new: str
    old: str
    paths: dict[str, Path]
    """name -> image: kernel-/initrd- of each release, uki, uki-nouname, truncated, corrupted, and
    copies of an initramfs each of the change tests alters (rewrite, touch, rename)."""

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]


@pytest.fixture(scope="module")
def images() -> Iterator[Images]:
    try:
        debs = kernel_debs(2)
        kernels = [extracted_kernel(d) for d in debs]
        initrds = [mkinitramfs_image(d) for d in debs]
    except Unavailable as e:
        pytest.skip(str(e))
    tool = missing_tool()
    if tool is not None:
        pytest.skip(tool)
    # Outside pytest's 0700 temp directory: a test reads them as another user.
    directory = Path(tempfile.mkdtemp(prefix="bootwatch-facts-"))
    directory.chmod(0o755)
    paths: dict[str, Path] = {}
    for kernel, initrd in zip(kernels, initrds):
        paths[f"kernel-{kernel.version}"] = Path(shutil.copyfile(kernel.boot / f"vmlinuz-{kernel.version}",
                                                                 directory / f"vmlinuz-{kernel.version}"))
        paths[f"initrd-{kernel.version}"] = Path(shutil.copyfile(initrd, directory / f"initrd.img-{kernel.version}"))
    old, new = sorted(k.version for k in kernels)
    paths["uki"] = build_uki(directory / "debian.efi", kernel=paths[f"kernel-{new}"], initrd=paths[f"initrd-{new}"],
                             osrel=OSREL, cmdline=b"ro quiet", uname=new.encode() + b"\n")
    paths["uki-nouname"] = build_uki(directory / "nouname.efi", kernel=paths[f"kernel-{new}"], initrd=None,
                                     osrel=OSREL, cmdline=None, uname=None)
    data = paths[f"initrd-{new}"].read_bytes()
    (directory / "truncated.img").write_bytes(data[:len(data) // 2])  # what a full /boot leaves
    paths["truncated"] = directory / "truncated.img"
    kernel = bytearray(paths[f"kernel-{new}"].read_bytes())
    middle = len(kernel) // 2
    kernel[middle:middle + 4096] = bytes(b ^ 0xFF for b in kernel[middle:middle + 4096])
    (directory / "vmlinuz-corrupted").write_bytes(bytes(kernel))  # size, and so the header's check, unchanged
    paths["corrupted"] = directory / "vmlinuz-corrupted"
    # The change tests alter a copy of the larger initramfs to hold the smaller one (zero padded
    # to the same size, as the kernel allows): other content, other module releases.
    larger, smaller = sorted((paths[f"initrd-{v}"] for v in (old, new)), key=lambda p: -p.stat().st_size)
    for change in ("rewrite", "touch", "rename"):
        paths[change] = Path(shutil.copyfile(larger, directory / f"initrd-{change}.img"))
    paths["smaller"] = smaller
    for path in paths.values():
        path.chmod(0o644)
    # Facts are remembered only for files changed RACY_MARGIN_NS before their read: age them once.
    newest = max(p.stat().st_ctime_ns for p in paths.values())
    time.sleep(max(0.0, (newest + scanproof.RACY_MARGIN_NS - time.time_ns()) / 1e9 + 0.1))
    yield Images(directory, new, old, paths)
    shutil.rmtree(directory)


def _runtime(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    return run


def _bad(images: Images) -> list[Path]:
    return [images["truncated"], images["corrupted"]]


def _good(images: Images) -> list[Path]:
    return [images[f"{role}-{release}"] for release in (images.old, images.new) for role in ("kernel", "initrd")] \
        + [images["uki"], images["uki-nouname"]]


def test_the_facts_of_real_images(images: Images, tmp_path: Path) -> None:
    memo = FactsMemo(_runtime(tmp_path))
    for release in (images.old, images.new):
        kernel = memo.of(images[f"kernel-{release}"])
        assert kernel is not None and (kernel.check.kind, kernel.check.outcome) == (ImageKind.KERNEL, Outcome.OK)
        assert (kernel.release, kernel.module_releases) == (release, None)
        initrd = memo.of(images[f"initrd-{release}"])
        assert initrd is not None and (initrd.check.kind, initrd.check.outcome) == (ImageKind.INITRAMFS, Outcome.OK)
        assert (initrd.release, initrd.module_releases) == (None, frozenset({release}))
    uki = memo.of(images["uki"])
    assert uki is not None and (uki.check.kind, uki.check.outcome) == (ImageKind.UKI, Outcome.OK), uki
    # The release is .uname's; the .initrd's modules are the UKI's.
    assert (uki.release, uki.module_releases) == (images.new, frozenset({images.new}))
    bare = memo.of(images["uki-nouname"])
    assert bare is not None and bare.check.ok, bare
    # No .uname: the .linux section's own setup header says it; no .initrd: no initramfs at all.
    assert (bare.release, bare.module_releases) == (images.new, None)
    truncated = memo.of(images["truncated"])
    assert truncated is not None and truncated.check.failed and truncated.module_releases is None, truncated
    corrupted = memo.of(images["corrupted"])
    assert corrupted is not None and corrupted.check.failed and corrupted.release is None, corrupted
    assert memo.of(images.directory / "absent") is None


def test_the_release_is_the_uname_section_s(images: Images, tmp_path: Path) -> None:
    """A UKI's .uname is what it says it boots, whatever its .linux header holds."""
    uki = build_uki(tmp_path / "other.efi", kernel=images[f"kernel-{images.new}"], initrd=None, osrel=OSREL,
                    cmdline=None, uname=b"6.1.0-99-test")
    facts = FactsMemo(_runtime(tmp_path)).of(uki)
    assert facts is not None and facts.release == "6.1.0-99-test"


def test_each_image_is_opened_once_and_not_again(images: Images, tmp_path: Path) -> None:
    """One pass per image: the check, the release and the modules from one open; then none."""
    memo = FactsMemo(_runtime(tmp_path))
    every = _good(images) + _bad(images)
    with opens_of(every) as first:
        for path in every:
            memo.of(path)
    assert sorted(first) == sorted(map(str, every))
    before = rchar()
    with opens_of(every) as second:
        again = [memo.of(path) for path in every]
    read = rchar() - before
    assert second == []
    assert read < 64 << 10, f"{read} bytes read by a check of unchanged images"
    assert again == [memo.of(path) for path in every]


_CHILD = r"""
import json, os, sys
from pathlib import Path
wanted = set(sys.argv[2:])
opened = []
sys.addaudithook(lambda event, args: opened.append(os.fsdecode(args[0]))
                 if event in ("open", "subprocess.Popen") and isinstance(args[0], (str, bytes, os.PathLike)) else None)
from bootwatch.health.facts import FactsMemo
def rchar():
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
memo = FactsMemo(Path(sys.argv[1]))
before = rchar()
facts = {p: memo.of(Path(p)) for p in sys.argv[2:]}
read = rchar() - before
memo.save()
print(json.dumps({"opened": [p for p in opened if p in wanted], "read": read,
                  "facts": {p: f.to_json() for p, f in facts.items()}}))
"""


def _child(runtime: Path, paths: list[Path]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(runtime), *map(str, paths)], capture_output=True,
                          text=True, env=subprocess_env(), cwd=REPO_ROOT, timeout=120, check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _as_nobody(runtime: Path, paths: list[Path]) -> list[str]:
    """A forked child that becomes uid 65534 (the interpreter here is not nobody's to run anew)
    and checks ``paths`` with a memo of ``runtime``, then saves it: the images it opened."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            with opens_of(paths) as seen:
                memo = FactsMemo(runtime)
                for path in paths:
                    memo.of(path)
            memo.save()
            os.write(write_end, json.dumps(seen).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        output = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    opened: list[str] = json.loads(output)
    return opened


def test_a_new_process_reads_the_saved_facts_and_no_image(images: Images, tmp_path: Path) -> None:
    run = _runtime(tmp_path)
    every = _good(images) + _bad(images)
    memo = FactsMemo(run)  # saved as it learns, without a save() or a with block
    facts = {str(p): memo.of(p) for p in every}
    saved = json.loads((run / FACTS_NAME).read_text())
    assert sorted(i["path"] for i in saved["images"]) == sorted(facts)
    child = _child(run, every)
    assert child["opened"] == []
    assert child["read"] < 64 << 10, child["read"]
    assert {p: ImageFacts.from_json(f) for p, f in child["facts"].items()} == facts


def _as_nobody_facts(runtime: Path, path: Path) -> ImageFacts:
    """The facts of ``path`` as uid 65534 sees them, with a memo of ``runtime`` (a forked child)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            facts = FactsMemo(runtime).of(path)
            assert facts is not None
            os.write(write_end, json.dumps(facts.to_json()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        output = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return ImageFacts.from_json(json.loads(output))


def test_a_user_reads_root_s_facts_and_cannot_save(images: Images, tmp_path: Path) -> None:
    """``bootwatch entries`` run by a user: the daemon's memo (root's, mode 0644) is used as it is,
    and the user's cannot be saved (the runtime directory is root's), which is no error."""
    run = Path(tempfile.mkdtemp(prefix="bootwatch-facts-run-"))
    try:
        run.chmod(0o755)
        every = _good(images)
        with FactsMemo(run) as memo:
            for path in every:
                memo.of(path)
        saved = (run / FACTS_NAME).read_bytes()
        opened = _as_nobody(run, [*every, images["truncated"]])
        assert opened == [str(images["truncated"])]  # only what root's memo did not hold
        assert (run / FACTS_NAME).read_bytes() == saved
        # An image root keeps private is not checked by the user, which is not broken; root's
        # memo answers for it all the same.
        private = Path(shutil.copyfile(images[f"kernel-{images.old}"], run / "vmlinuz-private"))
        private.chmod(0o600)
        facts = _as_nobody_facts(run, private)
        assert (facts.check.outcome, facts.check.kind) == (Outcome.SKIPPED, ImageKind.UNKNOWN), facts
        assert "this user may not read it (permission denied)" in facts.check.message
        _age(private)
        assert FactsMemo(run).of(private) == FactsMemo(run).of(images[f"kernel-{images.old}"])
        assert _as_nobody_facts(run, private).check.ok
    finally:
        shutil.rmtree(run)


def _age(path: Path) -> None:
    """Wait until ``path``'s change is older than the racy margin (its facts are then remembered)."""
    ctime = path.stat().st_ctime_ns
    time.sleep(max(0.0, (ctime + scanproof.RACY_MARGIN_NS - time.time_ns()) / 1e9 + 0.1))


@pytest.mark.parametrize("change", ["rewrite", "touch", "rename"])
def test_a_changed_image_is_read_again(images: Images, tmp_path: Path, change: str) -> None:
    """A rewrite (mtime), a rewrite that put the mtime back (``touch -r``: ctime) and another file
    renamed over the name (inode), each with other content of the same size: the image is read
    again, in this process and from the saved memo."""
    path = images[change]
    memo = FactsMemo(_runtime(tmp_path))
    with opens_of([path]) as first:
        before = memo.of(path)
    assert first == [str(path)] and before is not None and before.check.ok and before.module_releases
    memo.save()
    st = path.stat()
    other_image = images["smaller"].read_bytes()
    replacement = other_image + bytes(st.st_size - len(other_image))
    if change == "rename":
        other = path.with_name(f".{path.name}.new")
        other.write_bytes(replacement)
        os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
        other.rename(path)
    else:
        with open(path, "r+b") as f:
            f.write(replacement)
        if change == "touch":
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and (change != "touch" or path.stat().st_mtime_ns == st.st_mtime_ns)
    for reader in (memo, FactsMemo(memo.runtime_dir)):  # this process's memo, and the saved one
        with opens_of([path]) as again:
            after = reader.of(path)
        assert again == [str(path)]
        assert after is not None and after.check.ok and after.module_releases, after
        assert after.module_releases != before.module_releases


def test_an_image_read_in_its_racy_window_is_read_again(images: Images, tmp_path: Path) -> None:
    """Facts read within the racy margin of the file's last change are not remembered: a write in
    the same clock tick would not move its timestamps."""
    path = Path(shutil.copyfile(images[f"initrd-{images.old}"], tmp_path / "fresh.img"))
    memo = FactsMemo(_runtime(tmp_path))
    with opens_of([path]) as seen:
        memo.of(path)
        memo.of(path)
    assert seen == [str(path)] * 2
    memo.save()
    assert not (memo.path).exists() or str(path) not in memo.path.read_text()
    _age(path)
    with opens_of([path]) as seen:
        memo.of(path)
        memo.of(path)
    assert seen == [str(path)]


def test_an_incomplete_check_is_not_remembered(images: Images, tmp_path: Path) -> None:
    memo = FactsMemo(_runtime(tmp_path), timeout=0)
    path = images[f"initrd-{images.old}"]
    with opens_of([path]) as seen:
        first, second = memo.of(path), memo.of(path)
    assert first is not None and first.check.incomplete and second == first
    assert seen == [str(path)] * 2


def test_saving_forgets_the_files_that_are_gone(images: Images, tmp_path: Path) -> None:
    run = _runtime(tmp_path)
    kept = images[f"kernel-{images.old}"]
    gone = Path(shutil.copyfile(images["uki-nouname"], tmp_path / "gone.efi"))
    _age(gone)
    with FactsMemo(run) as memo:
        memo.of(kept)
        memo.of(gone)
    assert {i["path"] for i in json.loads((run / FACTS_NAME).read_text())["images"]} == {str(kept), str(gone)}
    gone.unlink()
    with FactsMemo(run) as memo:
        memo.of(kept)
    assert [i["path"] for i in json.loads((run / FACTS_NAME).read_text())["images"]] == [str(kept)]
    # Asked for, a file that is gone is forgotten at once, without a save() or a with block.
    gone = Path(shutil.copyfile(images["uki-nouname"], tmp_path / "gone.efi"))
    _age(gone)
    FactsMemo(run).of(gone)
    assert str(gone) in (run / FACTS_NAME).read_text()
    gone.unlink()
    assert FactsMemo(run).of(gone) is None
    assert [i["path"] for i in json.loads((run / FACTS_NAME).read_text())["images"]] == [str(kept)]


def test_a_read_only_runtime_directory_is_no_error(images: Images, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    run = _runtime(tmp_path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(run)], check=True)
    try:
        with caplog.at_level(logging.DEBUG, logger="bootwatch.health.facts"), FactsMemo(run) as memo:
            facts = memo.of(images[f"kernel-{images.old}"])
        assert facts is not None and facts.check.ok
        assert os.listdir(run) == []
        assert [r.levelno for r in caplog.records] == [logging.DEBUG] and str(run) in caplog.records[0].getMessage()
    finally:
        subprocess.run(["umount", str(run)], check=True)


def _plant(kind: str, target: Path, good: bytes, tmp_path: Path) -> None:
    if kind == "not JSON":
        target.write_bytes(b"{\"format\": 1, \"images\": [")
    elif kind == "torn":
        target.write_bytes(good[:len(good) // 2])
    elif kind == "a relative path":
        memo = json.loads(good)
        memo["images"][0]["path"] = memo["images"][0]["path"].lstrip("/")
        target.write_text(json.dumps(memo))
    elif kind == "a bad signature":
        memo = json.loads(good)
        memo["images"][0]["signature"] = [1, 2, "3", 4, 5]
        target.write_text(json.dumps(memo))
    elif kind == "a bad outcome":
        memo = json.loads(good)
        memo["images"][0]["check"]["outcome"] = "fine"
        target.write_text(json.dumps(memo))
    elif kind == "a FIFO":
        os.mkfifo(target)
    elif kind == "a directory":
        target.mkdir()
    elif kind == "a symlink":
        elsewhere = tmp_path / "elsewhere.json"
        elsewhere.write_bytes(good)
        target.symlink_to(elsewhere)
    elif kind == "too large":
        target.write_bytes(good)
        os.truncate(target, MAX_FACTS_SIZE + 1)
    elif kind == "another user's":
        target.write_bytes(good)
        os.chown(target, 1234, 1234)
    elif kind == "group-writable":
        target.write_bytes(good)
        target.chmod(0o664)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["not JSON", "torn", "a relative path", "a bad signature", "a bad outcome",
                                  "a FIFO", "a directory", "a symlink", "too large", "another user's",
                                  "group-writable"])
def test_a_bad_memo_file_starts_empty_with_one_warning(images: Images, tmp_path: Path, kind: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    run = _runtime(tmp_path)
    path = images[f"initrd-{images.old}"]
    with FactsMemo(run) as memo:
        expected = memo.of(path)
    good = (run / FACTS_NAME).read_bytes()
    (run / FACTS_NAME).unlink()
    _plant(kind, run / FACTS_NAME, good, tmp_path)
    with caplog.at_level(logging.WARNING, logger="bootwatch.health.facts"), opens_of([path]) as seen:
        memo = FactsMemo(run)
        assert memo.of(path) == expected
    assert seen == [str(path)]  # nothing of the file was used
    assert len(caplog.records) == 1, caplog.text
    assert str(run / FACTS_NAME) in caplog.records[0].getMessage() and "read again" in caplog.records[0].getMessage()
    memo.save()
    if kind != "a directory":  # a directory at the name is not replaced: the memo is just not saved
        assert (run / FACTS_NAME).read_bytes() == good


def test_a_memo_of_another_bootwatch_version_is_not_used(images: Images, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    run = _runtime(tmp_path)
    path = images[f"kernel-{images.old}"]
    with FactsMemo(run) as memo:
        memo.of(path)
    saved = json.loads((run / FACTS_NAME).read_text())
    saved["bootwatch"] = "0.0.1"
    (run / FACTS_NAME).write_text(json.dumps(saved))
    with caplog.at_level(logging.DEBUG, logger="bootwatch.health.facts"), opens_of([path]) as seen:
        FactsMemo(run).of(path)
    assert seen == [str(path)]
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
