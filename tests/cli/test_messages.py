"""Messages read well: numbers agree with their nouns, ``verify`` says each check once, ``clean``
says what it did (past tense) or, with --dry-run, what it would do, and human text shows an
image by the 12 digits ``bootwatch list`` shows (--json and the journal's fields keep all 40).
Real CLI runs on a real boot tree."""

from __future__ import annotations

import json
import re

import pytest
from conftest import BootTree

pytestmark = pytest.mark.slow  # several real command-line runs each

FULL_ID = re.compile(r"\b[0-9a-f]{40}\b")


def messages(stderr: str) -> str:
    """The log lines' messages, without the fields that stderr shows after them ("(event=... image_id=...)")."""
    return "\n".join(line.split(" (event=")[0] for line in stderr.splitlines())


def test_a_restore_for_one_entry_says_one_boot_entry_and_a_short_id(boot_tree: BootTree) -> None:
    ids = boot_tree.write_kernel("6.1.0")
    boot_tree.write_entry("one", linux="/vmlinuz-6.1.0", initrd=["/initramfs-6.1.0.img"])
    rc, out, err = boot_tree.cli("scan")
    assert rc == 0, err
    # The daemon's and scan's log lines: "cached as image <12 digits>".
    kernel_id = ids["/vmlinuz-6.1.0"]
    assert f"/vmlinuz-6.1.0: cached as image {kernel_id[:12]} (event=IMAGE_CACHED" in err, err
    assert not FULL_ID.search(messages(err)), err
    assert f"image_id={kernel_id} " in err, "the event's field keeps the whole id"
    boot_tree.path("/vmlinuz-6.1.0").unlink()
    rc, out, err = boot_tree.cli("scan")
    assert rc == 0, err
    assert f"/vmlinuz-6.1.0: restored image {kernel_id[:12]} (referenced by 1 boot entry)" in err, err
    assert "1 boot entries" not in err + out
    assert not FULL_ID.search(messages(err)), err
    # --json keeps the whole id.
    assert kernel_id in json.dumps(boot_tree.cli_json("list", "--json"))


def test_a_removed_file_two_entries_need_says_boot_entries(boot_tree: BootTree) -> None:
    boot_tree.write_kernel("6.1.0")
    for name in ("a", "b"):
        boot_tree.write_entry(name, linux="/vmlinuz-6.1.0", initrd=["/initramfs-6.1.0.img"])
    assert boot_tree.cli("scan")[0] == 0
    boot_tree.path("/vmlinuz-6.1.0").unlink()
    rc, out, err = boot_tree.cli("scan")
    assert "(referenced by 2 boot entries)" in err, err


def test_verify_says_an_unknown_image_is_not_checked_once(boot_tree: BootTree) -> None:
    ids = boot_tree.write_kernel("6.1.0")  # random bytes: no format bootwatch knows
    assert boot_tree.cli("add", *ids)[0] == 0
    rc, out, err = boot_tree.cli("verify")
    assert rc == 0, err
    lines = out.splitlines()
    assert f"ok     {ids['/vmlinuz-6.1.0'][:12]}  /vmlinuz-6.1.0" in lines, out
    assert "       image not checked: not a kernel, initramfs or filesystem image that bootwatch knows" in lines, out
    assert "unchecked: not checked" not in out and "unknown:" not in out
    assert not FULL_ID.search(out), out


def test_verify_says_a_failure_once(boot_tree: BootTree) -> None:
    ids = boot_tree.write_kernel("6.1.0")
    assert boot_tree.cli("add", *ids)[0] == 0
    kernel = ids["/vmlinuz-6.1.0"]
    boot_tree.image(kernel).write_bytes(b"rotten")
    rc, out, err = boot_tree.cli("verify")
    assert rc == 1
    failed = [line for line in out.splitlines() if kernel[:12] in line]
    assert failed == [f"FAILED {kernel[:12]}  /vmlinuz-6.1.0: content hashes to "
                      f"{boot_tree.sha1_bytes(b'rotten')}, not to its id"], out


def test_clean_says_what_it_did_and_a_dry_run_what_it_would_do(boot_tree: BootTree) -> None:
    ids = boot_tree.write_kernel("6.1.0")
    assert boot_tree.cli("add", *ids)[0] == 0  # no entry references them
    rc, dry, err = boot_tree.cli("clean", "--dry-run", "--force")  # no entries ever: confirmed
    assert rc == 0, err
    assert sorted(dry.splitlines()) == sorted(
        [f"would uncache {path}: no boot entry references it" for path in ids]
        + [f"would delete image {image[:12]}" for image in ids.values()]), dry
    rc, done, err = boot_tree.cli("clean", "--force")
    assert rc == 0, err
    assert sorted(done.splitlines()) == sorted(
        [f"uncached {path}: no boot entry references it" for path in ids]
        + [f"deleted image {image[:12]}" for image in ids.values()]), done
    assert "would" not in done
    rc, again, err = boot_tree.cli("clean", "--force")
    assert again == "nothing to clean\n"


def test_scan_counts_one_path_in_the_singular(boot_tree: BootTree) -> None:
    boot_tree.write_file("/vmlinuz-6.1.0")
    boot_tree.write_entry("one", linux="/vmlinuz-6.1.0")
    rc, out, err = boot_tree.cli("scan")
    assert rc == 0, err
    assert out == ("1 boot entry (bls 1); examined 1 path, hashed 1: 1 cached, 0 changed, 0 restored, 0 missing, "
                   "0 errors\n"), out


def test_io_errors_are_counted_in_words() -> None:
    """The daemon's I/O error lines (bootwatch.log.IoErrorLog): "1 failure", "1 more time"."""
    import errno
    import logging

    from bootwatch.log import IoErrorLog

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    logger = logging.getLogger("bootwatch.test.io_errors")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    lines = Lines()
    logger.addHandler(lines)
    io_errors = IoErrorLog(logger, repeat=0.0)
    io_errors.report("/cache/x.img", errno.ENOSPC, "/cache/x.img: no space left")
    io_errors.clear("a write succeeded")
    assert lines.lines[-1].startswith("a write succeeded: the I/O errors of /cache/x.img are over (1 failure in ")
    io_errors = IoErrorLog(logger, repeat=3600.0)
    io_errors.report("/cache/x.img", errno.ENOSPC, "/cache/x.img: no space left")
    io_errors.report("/cache/x.img", errno.ENOSPC, "/cache/x.img: no space left")
    io_errors.repeat = 0.0
    io_errors.report("/cache/x.img", errno.ENOSPC, "/cache/x.img: no space left")
    assert lines.lines[-1] == "/cache/x.img: no space left; failed 1 more time since it was last logged"
