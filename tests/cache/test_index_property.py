"""Property: any index either is refused as corrupt, or every command handles it.

Hypothesis builds boom-shaped indexes around a small pool of real images (valid structure with
hostile values: huge, negative, non-finite and wrongly typed numbers, repeated ids, extra data of
every JSON type, names with control characters or lone surrogates), plus arbitrary JSON, and puts
them in a real cache beside a real boot directory with BLS entries. Then it runs the read-only commands (list,
list --json, show, show --json, status, verify, fsck without repair) and clean (--dry-run, then
for real) through ``bootwatch.cli.main.main`` in-process, with stdout and stderr captured.

Allowed: exit 0 or 1 (status: 0 or 3, "not running"), an error as one ``bootwatch:`` line (and
its hint), never "internal error" or a traceback. After a clean that succeeded, the index it wrote
loads, and every referenced path it had still has an image file.

``scan`` is not in the in-process run: it writes (it is the daemon's reconcile) and installs a
log handler on the process's stderr. It runs, with every other command, as a real child process
on the hostile indexes of test_index_validation.py.

The full suite runs 150 examples (the module is slow); ``-m slow`` adds a search of 3000. In-process, the store's
retries of a read that fails to parse (for boom's in-place writes; 0.14 s per command here, as
most indexes drawn are refused) are turned off: they are not what this test is about.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bootwatch.cache import store
from bootwatch.cache.index import CacheIndex
from bootwatch.cli.main import main
from bootwatch.errors import IndexCorruptError, UnsafePathError
from bootwatch.safety import normalize_boot_path

pytestmark = pytest.mark.slow

BLOBS = [b"kernel image one\n" * 40, b"initramfs two\n" * 30, b"efi three\n" * 20]
POOL = [hashlib.sha1(b).hexdigest() for b in BLOBS]
PHANTOM = ["f" * 40, "0123456789abcdef0123456789abcdef01234567"]  # ids without an image file
PATHS = ["/vmlinuz-1", "/initramfs-1.img", "/sub/vmlinuz-2", "/x.efi", "/vmlinuz-\x1b[31mred\x07"]
# Index keys no file can be named: JSON "\ud800" and "\udcff" give lone surrogates, which do not
# encode for the filesystem. Only in the index (the tree has no such file, no entry names one).
UNENCODABLE = ["/vmlinuz-\ud800", "/\udcff", "/sub/\udfff-2"]

# JSON values of every kind, the numbers hostile ones.
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2 ** 80), max_value=2 ** 80),
    st.sampled_from([0, -1, 1, 0o106777, 0o177777, 0o200000, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 63, 10 ** 30,
                     253402300799, 253402300800, -(2 ** 31) - 1, 1_700_000_000]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
scalars = st.one_of(numbers, st.none(), st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=8)


def maybe(strategy, value_strategy=json_values):
    """The usual value, or a hostile one."""
    return st.one_of(strategy, strategy, value_strategy)


image_ids = st.sampled_from(POOL + PHANTOM)
verified = st.fixed_dictionaries({}, optional={
    "time": maybe(st.integers(0, 2 ** 31)), "ok": maybe(st.booleans()), "message": maybe(st.text(max_size=10)),
    "checks": maybe(st.lists(st.dictionaries(st.sampled_from(["kind", "outcome", "message"]), json_values,
                                             max_size=3), max_size=2))})
image_extra = st.fixed_dictionaries({}, optional={
    "sha256": maybe(st.text("0123456789abcdef", min_size=64, max_size=64)),
    "size": maybe(st.integers(0, 10 ** 6)), "cached_at": maybe(st.integers(0, 2 ** 31)),
    "verified": maybe(verified)})
path_extra = st.fixed_dictionaries({}, optional={
    "stat": maybe(st.lists(st.integers(0, 2 ** 64), min_size=5, max_size=5)), "stat_image_id": maybe(image_ids)})
path_meta = st.fixed_dictionaries(
    {"path_mode": maybe(st.sampled_from([0o100644, 0o100600, 0o100755])), "path_uid": maybe(st.just(0)),
     "path_gid": maybe(st.just(0))},
    optional={"path_attrs": json_values, "bootwatch": maybe(path_extra), "future": json_values})
image_entry = st.fixed_dictionaries({"image_ts": maybe(st.integers(1_600_000_000, 1_800_000_000), numbers)},
                                    optional={"bootwatch": maybe(image_extra), "future": json_values})


@st.composite
def boom_indexes(draw) -> tuple[dict, bool]:
    """(an index, whether to drop a key of a path's entries) around the pool."""
    paths = draw(st.lists(st.sampled_from(PATHS + UNENCODABLE), unique=True, max_size=4))
    index: dict[str, list[str]] = {}
    for path in paths:
        index[path] = draw(st.lists(image_ids, min_size=1, max_size=3))
    data: dict = {"index": index, "paths": {}, "images": {}}
    for path in paths:
        data["paths"][path] = draw(path_meta)
    listed = {i for ids in index.values() for i in ids} | set(draw(st.lists(image_ids, max_size=2)))
    for image_id in listed:
        data["images"][image_id] = draw(image_entry)
    return data


@st.composite
def index_texts(draw) -> str:
    kind = draw(st.sampled_from(["boom", "boom", "boom", "boom", "mangled", "any", "deep"]))
    if kind == "any":
        return json.dumps(draw(json_values))
    if kind == "deep":
        depth = draw(st.sampled_from([10, 500, 990, 5000, 50_000]))
        data = draw(boom_indexes())
        return json.dumps(data)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    data = draw(boom_indexes())
    if kind == "mangled":
        # Replace a whole table or entry with any value.
        table = draw(st.sampled_from(["index", "paths", "images"]))
        if data[table] and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(data[table])))
            data[table][key] = draw(json_values)
        else:
            data[table] = draw(json_values)
    return json.dumps(data)  # NaN and Infinity as Python writes them


@st.composite
def trees(draw) -> dict:
    return {
        "index": draw(index_texts()),
        "images": draw(st.lists(st.sampled_from(range(len(BLOBS))), unique=True)),
        "corrupt_image": draw(st.booleans()),
        # Per path: absent, the content of a pool image, or other content.
        "boot": {p: draw(st.sampled_from(["absent", "pool", "other"])) for p in PATHS},
        "referenced": draw(st.lists(st.sampled_from(PATHS), unique=True, max_size=3)),
    }


def build(root: Path, tree: dict) -> tuple[Path, Path, Path]:
    boot, cache, config = root / "boot", root / "cache", root / "bootwatch.toml"
    entries = boot / "loader" / "entries"
    entries.mkdir(parents=True)
    os.mkdir(cache, 0o700)
    config.write_text(f'[paths]\nruntime = "{root}/run"\n')
    (cache / "cacheindex.json").write_text(tree["index"])
    for n in tree["images"]:
        (cache / f"{POOL[n]}.img").write_bytes(BLOBS[n])
    if tree["corrupt_image"]:
        (cache / f"{PHANTOM[0]}.img").write_bytes(b"does not hash to its name")
    for n, path in enumerate(PATHS):
        target = boot / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if tree["boot"][path] == "pool":
            target.write_bytes(BLOBS[n % len(BLOBS)])
        elif tree["boot"][path] == "other":
            target.write_bytes(b"something else %d" % n)
    for n, path in enumerate(tree["referenced"]):
        (entries / f"e{n}.conf").write_text(f"title e{n}\nlinux {path}\n")
    return boot, cache, config


def run(config: Path, boot: Path, cache: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["--config", str(config), "--boot-dir", str(boot), "--cache-dir", str(cache), *args])
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


def assert_allowed(args: tuple[str, ...], rc: int, out: str, err: str, *, ok_codes=(0, 1)) -> None:
    what = f"bootwatch {' '.join(args)} -> {rc}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}"
    assert rc in ok_codes, what
    assert "internal error" not in err and "Traceback" not in err + out, what
    lines = err.splitlines()
    assert all(line.startswith("bootwatch: ") for line in lines), what
    assert len([line for line in lines if not line.startswith("bootwatch: hint: ")]) <= 1, what
    if rc == 1 and not out:
        assert lines, f"failed without a word: {what}"


def referenced_images(cache: Path, referenced: list[str]) -> dict[str, bool]:
    """For each referenced path the index lists: does it have an image file?"""
    try:
        index = CacheIndex.from_json((cache / "cacheindex.json").read_bytes(), source="idx")
    except (IndexCorruptError, OSError):
        return {}
    return {p: any((cache / f"{i}.img").exists() for i in index.image_ids(p)) for p in referenced if p in index}


@contextlib.contextmanager
def no_read_retries():
    saved = store.READ_RETRY_DELAYS
    store.READ_RETRY_DELAYS = ()
    try:
        yield
    finally:
        store.READ_RETRY_DELAYS = saved


def check_every_command(tree: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="bootwatch-prop-") as tmp, no_read_retries():
        boot, cache, config = build(Path(tmp), tree)
        try:
            data = json.loads(tree["index"])
            show = sorted(data["index"])[0] if data.get("index") else PATHS[0]
        except Exception:
            show = PATHS[0]
        # A path of the index, if it is one a user could type (else the command is a usage error).
        try:
            normalize_boot_path(show)
        except (UnsafePathError, AttributeError, TypeError):
            show = PATHS[0]
        for args in [("list",), ("list", "--json"), ("show", show), ("show", "--json", show), ("fsck",),
                     ("fsck", "--json"), ("verify",), ("clean", "--dry-run")]:
            assert_allowed(args, *run(config, boot, cache, *args))
        assert_allowed(("status",), *run(config, boot, cache, "status"), ok_codes=(0, 3))
        before = referenced_images(cache, tree["referenced"])
        rc, out, err = run(config, boot, cache, "clean")
        assert_allowed(("clean",), rc, out, err)
        if rc == 0:
            after = referenced_images(cache, tree["referenced"])
            assert CacheIndex.from_json((cache / "cacheindex.json").read_bytes(), source="idx") is not None \
                or not (cache / "cacheindex.json").exists()
            for path, had_image in before.items():
                assert after.get(path, False) >= had_image, f"clean lost the image of the referenced {path!r}"
            assert_allowed(("list",), *run(config, boot, cache, "list"))


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                database=None)


@settings(max_examples=150, **SETTINGS)
@given(trees())
def test_every_command_handles_or_refuses_any_index(tree: dict) -> None:
    check_every_command(tree)


@pytest.mark.slow
def test_every_command_handles_or_refuses_any_index_long_run(pytestconfig: pytest.Config) -> None:
    # Not in the full suite (other slow tests are): only when asked for with -m slow.
    if "slow" not in (pytestconfig.getoption("markexpr") or ""):
        pytest.skip("the long search runs with -m slow")
    settings(max_examples=3000, **SETTINGS)(given(trees())(check_every_command))()
