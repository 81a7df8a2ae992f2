"""Targets that need no daemon: 1 (hashing), 2 (add), 4 (reconcile of an unchanged tree), 7 (boom),
8 (scan against AIDE)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from bench.common import (
    MiB,
    Result,
    best_interleaved,
    run_bootwatch,
    run_python,
    sync,
    temp_dir,
    timed,
    warm,
    write_config,
    write_random_file,
)
from bench.sizes import Sizes

# ------------------------------------------------------------------------------------ target 1


def target_hashing(sizes: Sizes) -> list[Result]:
    """Throughput of ``hash_and_copy`` (SHA1 + SHA256, one read), the function ``add`` hashes with.

    It runs here without a destination (the hashing cost alone, as ``verify`` uses it); the
    copy is part of target 2. All sides read the same file from the page cache.
    """
    from bootwatch.cache.hashing import hash_and_copy

    with temp_dir("hash") as tmp:
        path = tmp / "image"
        write_random_file(path, sizes.hash_file, seed=1)
        warm(path)
        expected = []

        def bootwatch() -> None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                expected.append(hash_and_copy(fd).sha1)
            finally:
                os.close(fd)

        def file_digest() -> None:
            with open(path, "rb") as f:
                expected.append(hashlib.file_digest(f, "sha1").hexdigest())

        def sha1sum() -> None:
            out = subprocess.run(["sha1sum", str(path)], check=True, capture_output=True, text=True).stdout
            expected.append(out.split()[0])

        best = best_interleaved({"bootwatch": bootwatch, "file_digest": file_digest, "sha1sum": sha1sum},
                                sizes.repeat + 2)
        if len(set(expected)) != 1:
            raise RuntimeError(f"target 1: the three sides disagree on the SHA1: {sorted(set(expected))}")
    mib = sizes.hash_file / MiB
    rate = {k: mib / v for k, v in best.items()}
    faster = max(("file_digest", "sha1sum"), key=lambda k: rate[k])
    ratio = rate["bootwatch"] / rate[faster]
    return [Result("1", f"hash {mib:.0f} MiB (SHA1+SHA256) vs {faster} (SHA1 only)", rate["bootwatch"],
                   rate[faster], "MiB/s", ratio, "ratio >= 0.9", ratio >= 0.9,
                   [f"file_digest {rate['file_digest']:.0f} MiB/s, sha1sum {rate['sha1sum']:.0f} MiB/s"])]


# ------------------------------------------------------------------------------------ target 2


def target_add(sizes: Sizes) -> list[Result]:
    """``bootwatch add`` of a new image (the real command: interpreter start, lock, hash, copy,
    fsync, rename, index) against ``sha1sum FILE && cp FILE CACHE && sync``.

    Each repetition caches into an empty cache directory, so every add is a new image.
    ``sync`` runs untimed before each side, so neither pays for the other's dirty pages.
    """
    with temp_dir("add") as tmp:
        boot = tmp / "boot"
        (boot / "loader" / "entries").mkdir(parents=True)
        image = boot / "vmlinuz-bench"
        write_random_file(image, sizes.add_image, seed=2)
        warm(image)
        runtime = tmp / "run"
        counter = [0]

        def bootwatch() -> None:
            counter[0] += 1
            config = write_config(tmp / f"bootwatch-{counter[0]}.toml", boot, tmp / f"cache-{counter[0]}", runtime)
            run_bootwatch(config, "add", "/vmlinuz-bench")

        def baseline() -> None:
            counter[0] += 1
            dest = tmp / f"plain-{counter[0]}"
            dest.mkdir()
            subprocess.run(f"sha1sum '{image}' >/dev/null && cp '{image}' '{dest}/' && sync", shell=True,
                           check=True)

        best = best_interleaved({"bootwatch": bootwatch, "baseline": baseline}, sizes.repeat, before=sync)
        cached = [p for p in tmp.glob("cache-*/*.img")]
        if not cached or any(p.stat().st_size != sizes.add_image for p in cached):
            raise RuntimeError("target 2: bootwatch add left no complete image in the cache")
    ratio = best["bootwatch"] / best["baseline"]
    mib = sizes.add_image / MiB
    return [Result("2", f"add a new {mib:.0f} MiB image (fsync included)", best["bootwatch"], best["baseline"],
                   "s", ratio, "ratio <= 0.75", ratio <= 0.75,
                   ["bootwatch: the whole CLI process; baseline: sha1sum && cp && sync"])]


# ------------------------------------------------------------------------------------ target 4

def build_tree(boot: Path, count: int, size: int, seed: int) -> list[Path]:
    """``count`` distinct files ``vmlinuz-bench-N`` of ``size`` bytes, in a few subdirectories."""
    import random

    from bench.common import distinct_bytes

    block = random.Random(seed).randbytes(size)
    files = []
    for n in range(count):
        sub = boot / f"d{n % 16:02d}"
        sub.mkdir(exist_ok=True)
        path = sub / f"vmlinuz-bench-{n}"
        with open(path, "wb") as f:
            f.write(distinct_bytes(block, n))
        files.append(path)
    return files


_RECONCILE_SCRIPT = r"""
import json, sys, time
from pathlib import Path
from bootwatch.config import load_config
from bootwatch.cache.session import open_cache, reconcile_once

config = load_config(Path(sys.argv[1]))
start = time.perf_counter()
report = reconcile_once(config, open_cache(config))
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "examined": report.examined, "hashed": report.hashed,
                  "errors": len(report.errors), "cached": len(report.cached)}))
"""


def timed_reconcile(config: Path) -> dict:
    """``reconcile_once``, what ``bootwatch scan`` runs, timed inside a fresh interpreter after its imports."""
    return json.loads(run_python(_RECONCILE_SCRIPT, str(config)).stdout)


def target_reconcile(sizes: Sizes) -> list[Result]:
    """A full reconcile of an already indexed tree that did not change, against re-hashing it."""
    with temp_dir("reconcile") as tmp:
        boot = tmp / "boot"
        (boot / "loader" / "entries").mkdir(parents=True)
        files = build_tree(boot, sizes.tree_files, sizes.tree_file_size, seed=4)
        # The default patterns include "vmlinuz-*": every file of the tree is tracked.
        config = write_config(tmp / "bootwatch.toml", boot, tmp / "cache", tmp / "run", track="all")
        first = timed_reconcile(config)  # indexes the tree (its own figure is target 5's baseline)
        if first["cached"] != sizes.tree_files:
            raise RuntimeError(f"target 4: the first pass cached {first['cached']} of {sizes.tree_files} files")

        hashed = []

        def rehash() -> None:
            for path in files:
                with open(path, "rb") as f:
                    hashlib.file_digest(f, "sha1")

        results = {"bootwatch": [], "baseline": []}
        for _ in range(sizes.repeat):
            report = timed_reconcile(config)
            hashed.append(report["hashed"])
            results["bootwatch"].append(report["seconds"])
            results["baseline"].append(timed(rehash))
    best_bw, best_base = min(results["bootwatch"]), min(results["baseline"])
    ratio = best_bw / best_base
    ok = ratio <= 0.05 and max(hashed) == 0
    return [Result("4", f"reconcile {sizes.tree_files} unchanged indexed files "
                   f"({sizes.tree_file_size >> 10} KiB each)", best_bw, best_base, "s", ratio,
                   "ratio <= 0.05, 0 hashed", ok,
                   [f"files hashed by the reconcile: {max(hashed)}", "baseline: SHA1 of every file (file_digest)",
                    f"first pass from an empty index: {first['seconds']:.2f} s"])]


# ------------------------------------------------------------------------------------ target 7

# Both sides run in a fresh interpreter and time themselves from inside, after their imports.
# "read" is the bytes the process read through read(2) while listing (/proc/self/io rchar): a
# listing that re-hashes boot files reads at least their size.
_IO_HELPER = r"""
def rchar():
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
"""

_BOOM_SCRIPT = _IO_HELPER + r"""
import json, sys, time
import boom
from boom.config import load_boom_config
from boom.cache import load_cache, cache_path, find_cache_paths
boot = sys.argv[1]
paths = sys.argv[2:]
boom.set_boot_path(boot)
boom.set_boom_path(boot + "/boom")
load_boom_config()
assert boom.get_cache_path() == boot + "/boom/cache", boom.get_cache_path()
start = time.perf_counter()
load_cache()
for p in paths:
    cache_path(p)
cached = time.perf_counter() - start
# What 'boom cache list' computes for each row: the entry, its state and its reference count.
read0 = rchar()
start = time.perf_counter()
rows = [(ce.path, ce.img_id, ce.state, ce.count) for ce in find_cache_paths()]
listed = time.perf_counter() - start
print(json.dumps({"cache": cached, "list": listed, "rows": len(rows), "read": rchar() - read0,
                  "states": sorted({r[2] for r in rows})}))
"""

_BOOTWATCH_SCRIPT = _IO_HELPER + r"""
import json, sys, time
from pathlib import Path
from bootwatch.cache.operations import BootCache
from bootwatch.config import load_config
config = load_config(Path(sys.argv[1]))
paths = sys.argv[2:]
cache = BootCache.from_config(config)
start = time.perf_counter()
cache.add(paths)
cached = time.perf_counter() - start
read0 = rchar()
start = time.perf_counter()
rows = cache.list()
listed = time.perf_counter() - start
print(json.dumps({"cache": cached, "list": listed, "rows": len(rows), "read": rchar() - read0,
                  "states": sorted({r.state for r in rows})}))
"""


def _boom_tree(parent: Path, count: int, size: int):
    """A boom boot directory (``tests/boomenv.py``) with ``count`` images referenced by entries.

    The same seed gives both tools byte-identical images.
    """
    import random
    import sys as _sys

    from bench.common import REPO_ROOT, distinct_bytes

    _sys.path.insert(0, str(REPO_ROOT / "tests"))
    import boomenv  # the layout the compatibility tests use, so both tools accept it

    boot = parent / "boot"
    boot.mkdir(mode=0o755)
    cmd = boomenv.boom_command() or ["boom"]
    env = boomenv.layout(boot, cmd)
    block = random.Random(7).randbytes(size)
    paths = []
    for n in range(count // 2):
        version = f"6.1.{n}-{boomenv.UNAME_TAG}"
        linux, initrd = f"/vmlinuz-{version}", f"/initramfs-{version}.img"
        for k, p in enumerate((linux, initrd)):
            (boot / p.lstrip("/")).write_bytes(distinct_bytes(block, 2 * n + k))
            paths.append(p)
        env.write_entry(version, linux, initrd)
    return env, paths


def target_boom(sizes: Sizes) -> list[Result]:
    """Caching images, then listing them: bootwatch's library against boom's Python API."""
    try:
        import boom  # noqa: F401  (only probing)
    except ImportError:
        # Both rows, each saying why: a table without them would hide that the target was not run.
        return [Result(row, "not run: boom-boot not installed", 0.0, None, "s", None, "ratio < 1", False,
                       ["pip install boom-boot (needs libdbus-1-dev libglib2.0-dev pkg-config)"] if row == "7-cache"
                       else []) for row in ("7-cache", "7-list")]
    runs = {"boom": [], "bootwatch": []}
    for _ in range(sizes.repeat):
        for side in ("bootwatch", "boom"):
            with temp_dir(f"boom-{side}") as tmp:
                env, paths = _boom_tree(tmp, sizes.boom_images, sizes.boom_image_size)
                # Write the freshly made boot images back now: bootwatch's syncfs would otherwise
                # also pay for the setup's dirty pages, which boom (no fsync at all) never touches.
                sync()
                if side == "boom":
                    out = run_python(_BOOM_SCRIPT, str(env.boot), *paths).stdout
                else:
                    out = run_python(_BOOTWATCH_SCRIPT, str(env.bootwatch_config), *paths).stdout
                figures = json.loads(out)
                if figures["rows"] != len(paths):
                    raise RuntimeError(f"target 7: {side} listed {figures['rows']} of {len(paths)} paths")
                runs[side].append(figures)
    best = {side: {k: min(r[k] for r in rs) for k in ("cache", "list")} for side, rs in runs.items()}
    read = {side: max(r["read"] for r in rs) for side, rs in runs.items()}
    total = sizes.boom_images * sizes.boom_image_size
    n = sizes.boom_images
    size = f"{sizes.boom_image_size >> 10} KiB"
    rehashes = read["bootwatch"] >= total
    results = []
    for step, what in (("cache", f"cache {n} images of {size}"), ("list", f"list {n} cached paths")):
        ratio = best["bootwatch"][step] / best["boom"][step]
        ok = ratio < 1.0 and not (step == "list" and rehashes)
        notes = ["both timed inside their process, imports excluded"]
        if step == "list":
            notes = [f"bytes read while listing: bootwatch {read['bootwatch']}, boom {read['boom']} "
                     f"(the images total {total})"]
        results.append(Result(f"7-{step}", what, best["bootwatch"][step], best["boom"][step], "s", ratio,
                              "ratio < 1" + (", no re-hash" if step == "list" else ""), ok, notes))
    return results


# ------------------------------------------------------------------------------------ target 8

def kernel_tree(boot: Path, sizes: Sizes) -> list[Path]:
    """A /boot of ``scan_kernels`` kernels, each with its initramfs image and a BLS entry naming both."""
    files = []
    for n in range(sizes.scan_kernels):
        version = f"6.1.0-{n + 1}-amd64"
        kernel, initramfs = boot / f"vmlinuz-{version}", boot / f"initramfs-{version}.img"
        write_random_file(kernel, sizes.scan_kernel_size, seed=80 + 2 * n)
        write_random_file(initramfs, sizes.scan_initramfs_size, seed=81 + 2 * n)
        (boot / "loader" / "entries" / f"debian-{version}.conf").write_text(
            f"title Debian GNU/Linux {version}\nversion {version}\nlinux /{kernel.name}\ninitrd /{initramfs.name}\n"
            "options root=/dev/mapper/vg-root ro quiet\n")
        files += [kernel, initramfs]
    return files


def aide_config(path: Path, boot: Path, database: Path) -> Path:
    """The smallest aide.conf that checks ``boot`` with SHA1 and SHA256, its database in a temp dir."""
    path.write_text(
        f"database_in=file:{database}/aide.db\n"
        f"database_out=file:{database}/aide.db.new\n"
        "gzip_dbout=no\n"
        "report_url=stdout\n"
        "log_level=warning\n"
        "BootHashes = sha1+sha256\n"
        f"{re.escape(str(boot))} BootHashes\n")
    return path


def run_aide(config: Path, mode: str) -> None:
    """``aide --init`` or ``aide --check``; 0 is the only exit status of an unchanged tree."""
    proc = subprocess.run(["aide", mode, "-c", str(config)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"aide {mode} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-500:]}")


def target_scan_vs_aide(sizes: Sizes) -> list[Result]:
    """``bootwatch scan --quiet`` (what the kernel-install plugin runs; the whole CLI process) of an
    unchanged, already cached /boot, against ``aide --check`` of the same tree with SHA1+SHA256.

    Both read the files from the page cache (AIDE re-hashes every file at each check; bootwatch
    proves the tree unchanged from the stat signatures it recorded, and reads none of them).
    """
    total = sizes.scan_kernels * (sizes.scan_kernel_size + sizes.scan_initramfs_size)
    what = (f"scan an unchanged /boot of {sizes.scan_kernels} kernels + {sizes.scan_kernels} initramfs "
            f"({total / 1e6:.0f} MB) vs aide --check (sha1+sha256)")
    if shutil.which("aide") is None:
        if os.geteuid() == 0:
            raise RuntimeError("aide is not installed (apt-get install aide; tests/run.sh installs it)")
        # The row says why, as the boom rows do: a table without it would hide that it was not run.
        return [Result("8", "not run: aide not installed", 0.0, None, "s", None, "ratio <= 0.02", False,
                       ["apt-get install aide (tests/run.sh installs it when run as root)"])]
    with temp_dir("aide") as tmp:
        boot = tmp / "boot"
        (boot / "loader" / "entries").mkdir(parents=True)
        files = kernel_tree(boot, sizes)
        config = write_config(tmp / "bootwatch.toml", boot, tmp / "cache", tmp / "run")
        first = json.loads(run_bootwatch(config, "scan", "--json").stdout)
        if len(first["cached"]) != len(files):
            raise RuntimeError(f"target 8: the first scan cached {len(first['cached'])} of {len(files)} files")
        (tmp / "aide-db").mkdir()
        conf = aide_config(tmp / "aide.conf", boot, tmp / "aide-db")
        run_aide(conf, "--init")
        (tmp / "aide-db" / "aide.db.new").rename(tmp / "aide-db" / "aide.db")
        for path in files:
            warm(path)

        # --cache-dir names the configuration's own cache directory: where the plugin's bare
        # "bootwatch scan --quiet" finds the scan proof (bootwatch/scanproof.py) on a host, the
        # built-in default, is not this temp tree's.
        cache_dir = ("--cache-dir", str(tmp / "cache"))
        best = best_interleaved({"bootwatch": lambda: run_bootwatch(config, *cache_dir, "scan", "--quiet"),
                                 "aide": lambda: run_aide(conf, "--check")}, sizes.repeat + 2)
        proved = (tmp / "cache" / ".bootwatch-scan-proof").is_file()
        after = json.loads(run_bootwatch(config, "scan", "--json").stdout)
        if after["hashed"] or after["cached"] or after["changed"] or after["errors"]:
            raise RuntimeError(f"target 8: the tree was not found unchanged: {after}")
    ratio = best["bootwatch"] / best["aide"]
    return [Result("8", what, best["bootwatch"], best["aide"], "s", ratio, "ratio <= 0.02", ratio <= 0.02,
                   ["bootwatch: the whole CLI process, as the package hooks run it (with --cache-dir "
                    "naming the configuration's cache directory, the default's stand-in); "
                    "aide: aide --check -c a minimal aide.conf (sha1+sha256), its database initialised first",
                    f"files hashed by the scans: {after['hashed']} (checked after the timed runs); "
                    f"scan proof recorded by the first timed scan: {'yes' if proved else 'no'}"])]
