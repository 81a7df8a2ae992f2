"""What every benchmark target shares: results, timing, temp trees, configs, the machine line.

Timing rule: a target's bootwatch figure and its baseline are measured in the same run,
interleaved (bootwatch, baseline, bootwatch, baseline, ...), and each side keeps its best
repetition. On a shared machine other processes only ever make a run slower, so the best of
several interleaved runs is the figure least disturbed by them, and it is disturbed the same
way for both sides.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


@dataclass
class Result:
    """One row of the table."""

    target: str          # "1" ... "7", with a suffix for a target with two rows (3-p50, 7-list)
    what: str
    bootwatch: float     # the measured figure, in ``unit``
    baseline: float | None
    unit: str
    ratio: float | None  # bootwatch / baseline (or as ``rule`` says)
    rule: str            # the target, e.g. "ratio >= 0.9"
    passed: bool
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_interleaved(sides: dict[str, Callable[[], object]], repeat: int,
                     before: Callable[[], object] | None = None) -> dict[str, float]:
    """The best (smallest) wall time of each side over ``repeat`` interleaved rounds.

    ``before`` runs untimed before every measurement (e.g. ``sync`` so that no side pays for
    the dirty pages of the other).
    """
    best: dict[str, float] = {}
    for _ in range(repeat):
        for name, fn in sides.items():
            if before is not None:
                before()
            elapsed = timed(fn)
            best[name] = min(best.get(name, elapsed), elapsed)
    return best


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A private temp directory under $TMPDIR (ext4 /tmp here), removed on every exit path."""
    with tempfile.TemporaryDirectory(prefix=f"bootwatch-bench-{prefix}-") as tmp:
        yield Path(tmp)


def write_random_file(path: Path, size: int, seed: int = 0) -> None:
    """``size`` pseudo-random bytes (incompressible, reproducible by ``seed``), written and closed."""
    rng = random.Random(seed)
    block = rng.randbytes(min(size, 4 * MiB)) if size else b""
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
            # Different blocks per file position, without paying for random bytes each time.
            block = block[1:] + block[:1] if left else block


def distinct_bytes(data: bytes, n: int) -> bytes:
    """``data`` with the number ``n`` stamped at the front: same size, a distinct SHA1 per ``n``."""
    stamp = n.to_bytes(8, "little")
    return stamp + data[len(stamp):]


def warm(path: Path) -> None:
    """Read a file once so that every side reads it from the page cache."""
    with open(path, "rb") as f:
        while f.read(4 * MiB):
            pass


def sync() -> None:
    os.sync()


def compile_bootwatch() -> None:
    """Byte-compile bootwatch, as ``pip install`` does: the commands the benchmark times should not
    compile their own source at every start (40 ms of ``bootwatch add`` here), which an installed
    bootwatch never does. The ``.pyc`` files go to ``bootwatch/__pycache__`` (ignored by git);
    bootwatch_env() still keeps the commands from writing any of their own."""
    import compileall

    if not compileall.compile_dir(str(REPO_ROOT / "bootwatch"), quiet=1):
        print("warning: cannot byte-compile bootwatch; its start-up times include compiling it", file=sys.stderr)


def bootwatch_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def write_config(path: Path, boot: Path, cache: Path, runtime: Path, *, track: str = "referenced",
                 settle: str = "250ms", extra: str = "") -> Path:
    """A bootwatch TOML config naming only temp directories, so nothing reads or writes /boot."""
    path.write_text(
        "[paths]\n"
        f'boot = "{boot}"\n'
        f'entries = "{boot / "loader" / "entries"}"\n'
        f'cache = "{cache}"\n'
        f'runtime = "{runtime}"\n'
        "\n[cache]\n"
        f'track = "{track}"\n'
        "\n[watch]\n"
        f'settle = "{settle}"\n' + extra)
    return path


def run_bootwatch(config: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "bootwatch", "--config", str(config), *args]
    proc = subprocess.run(argv, env=bootwatch_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def run_python(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter (with the repository importable)."""
    argv = [sys.executable, "-c", script, *args]
    proc = subprocess.run(argv, env=bootwatch_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return proc


def filesystem_of(path: Path) -> str:
    """The filesystem type of the mount holding ``path`` (longest matching mount point)."""
    best, fstype = "", "?"
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            mnt = fields[1].replace("\\040", " ")
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, fstype = mnt, fields[2]
    return fstype


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def machine() -> dict[str, str]:
    tmp = Path(tempfile.gettempdir())
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "fs": f"{filesystem_of(tmp)} ({tmp})",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mem": f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') // (1 << 30)} GiB",
    }


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table: readable in a terminal and in the README alike."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in rows)])
