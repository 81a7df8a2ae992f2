"""Target 10: a health re-check of an unchanged host of 6 kernels reads no image, in at most 1.5 ×
the time of ``bootwatch scan`` of the same host.

The host: ``sizes.scan_kernels`` BLS entries, each with a real Debian cloud kernel and the
initramfs Debian's mkinitramfs makes for it (the test fixtures' cache, tests/realboot; the two
releases there alternate), cached by a first ``bootwatch scan``. The health check is what
``bootwatch entries`` runs: the configuration, the entry inventory and
``check_host(...).all()`` with the image facts memo of ``[paths] runtime``, in a new interpreter
each time (the memo it starts from is the persisted one, as for the command). What it reads is
counted in that process: a Python audit hook records every ``open`` of an image path (the bytes
of images read are the sizes of those opened), and ``/proc/self/io``'s ``rchar`` counts every
byte read by any means from the configuration on (the modules the check imports as it goes
included), which must stay far below one image.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench.common import (
    REPO_ROOT,
    MiB,
    Result,
    best_interleaved,
    run_bootwatch,
    run_python,
    temp_dir,
    warm,
    write_config,
)
from bench.sizes import Sizes
from bootwatch import scanproof

RULE = "ratio <= 1.5, 0 image bytes read"
# Each side is a process start of a few hundred milliseconds, mostly imports: cheap to repeat,
# and the best of a dozen is what the noise of a shared machine leaves of either.
READ_LIMIT = 1 * MiB  # rchar of the whole check: a kernel image is 7 MiB, an initramfs 14 MiB

CHECK = r"""
import json, os, sys
images = json.loads(sys.argv[2])
opened = []
sys.addaudithook(lambda event, args: opened.append(os.path.realpath(os.fsdecode(args[0])))
                 if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) else None)
def rchar():
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
from pathlib import Path
from bootwatch.cache.operations import BootCache
from bootwatch.config import load_config
from bootwatch.health.facts import FactsMemo
from bootwatch.health.judge import check_host
before = rchar()
config = load_config(Path(sys.argv[1]))
cache = BootCache.from_config(config)
healths = check_host(cache, cache.read_inventory(), FactsMemo(config.paths.runtime)).all()
read = rchar() - before
image_bytes = sum(images[p] for p in opened if p in images)
print(json.dumps({"entries": len(healths), "opened": sorted({p for p in opened if p in images}),
                  "image_bytes": image_bytes, "rchar": read,
                  "findings": sorted({f.check.value for h in healths for f in h.findings
                                      if f.check.value in ("file", "format", "kernel_version")})}))
"""


def _pairs() -> list[tuple[str, Path, Path]]:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from realboot.grub_mkconfig import extracted_kernel, kernel_debs
    from realboot.initramfs_build import mkinitramfs_image
    pairs = []
    for deb in kernel_debs(2):
        kernel = extracted_kernel(deb)
        pairs.append((kernel.version, kernel.boot / f"vmlinuz-{kernel.version}", mkinitramfs_image(deb)))
    return pairs


def _host(boot: Path, kernels: int) -> dict[str, int]:
    """``kernels`` entries of real pairs in ``boot``; every image's real path -> its size."""
    pairs = _pairs()
    images: dict[str, int] = {}
    for n in range(kernels):
        version, vmlinuz, initrd = pairs[n % len(pairs)]
        name = f"{version}-{n}"
        for source, target in ((vmlinuz, boot / f"vmlinuz-{name}"), (initrd, boot / f"initrd.img-{name}")):
            shutil.copyfile(source, target)
            images[os.path.realpath(target)] = target.stat().st_size
        (boot / "loader" / "entries" / f"debian-{name}.conf").write_text(
            f"title Debian {name}\nversion {version}\nlinux /vmlinuz-{name}\ninitrd /initrd.img-{name}\n"
            "options root=UUID=0b5c1d1e-7f1c-4c55-9d2f-1f0c9a7d3e11 ro quiet\n")
    return images


def target_health_recheck(sizes: Sizes) -> list[Result]:
    what = f"health re-check of an unchanged host of {sizes.scan_kernels} kernels vs bootwatch scan"
    if os.geteuid() != 0:
        return [Result("10", "not run: needs root (mkinitramfs in a chroot)", 0.0, None, "s", None, RULE, False,
                       ["run bench/run.py as root"])]
    with temp_dir("health") as tmp:
        boot = tmp / "boot"
        (boot / "loader" / "entries").mkdir(parents=True)
        images = _host(boot, sizes.scan_kernels)
        config = write_config(tmp / "bootwatch.toml", boot, tmp / "cache", tmp / "run")
        first = json.loads(run_bootwatch(config, "scan", "--json").stdout)
        if len(first["cached"]) != len(images):
            raise RuntimeError(f"target 10: the first scan cached {len(first['cached'])} of {len(images)} files")
        for path in images:
            warm(Path(path))
        # Facts are remembered for files changed longer ago than the racy margin (bootwatch.health.facts).
        newest = max(os.stat(p).st_ctime_ns for p in images)
        time.sleep(max(0.0, (newest + scanproof.RACY_MARGIN_NS - time.time_ns()) / 1e9 + 0.1))
        argv = (CHECK, str(config), json.dumps(images))
        t0 = time.perf_counter()
        cold = json.loads(run_python(*argv).stdout)
        cold_time = time.perf_counter() - t0
        checks: list[dict[str, object]] = []
        best = best_interleaved({"health": lambda: checks.append(json.loads(run_python(*argv).stdout)),
                                 "scan": lambda: run_bootwatch(config, "scan")}, sizes.repeat * 4)
    image_bytes = max(int(str(c["image_bytes"])) for c in checks)
    rchar = max(int(str(c["rchar"])) for c in checks)
    opened = sorted({p for c in checks for p in c["opened"]})  # type: ignore[attr-defined]
    ratio = best["health"] / best["scan"]
    passed = ratio <= 1.5 and image_bytes == 0 and not opened and rchar < READ_LIMIT
    return [Result("10", what, best["health"], best["scan"], "s", ratio, RULE, passed, [
        "health: a new interpreter running what bootwatch entries runs (configuration, inventory, "
        "check_host(...).all() with the image facts memo of [paths] runtime); scan: the whole bootwatch scan "
        "process; both on the unchanged host, cached by a first scan",
        f"image bytes read by the {len(checks)} timed re-checks: {image_bytes} (images opened: {len(opened)}); "
        f"all bytes read by one re-check (from the configuration on): at most {rchar / MiB:.2f} MiB (limit "
        f"{READ_LIMIT / MiB:.0f} MiB); {cold['entries']} entries",
        f"the first check (no memo yet) read {cold['image_bytes'] / MiB:.0f} MiB of images in "
        f"{cold_time:.2f} s; its file/format/version findings: {', '.join(cold['findings']) or 'none'}"])]
