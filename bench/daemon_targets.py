"""Targets that need the running daemon: 3 (latency), 5 (event storm) and 6 (idle cost).

The daemon is the real ``bootwatch run`` in a subprocess. Readiness is its own ``READY=1`` on a
``$NOTIFY_SOCKET`` that the benchmark binds (as systemd would). The moment an index is committed
is seen with inotify: bootwatch commits ``cacheindex.json`` by rename(2), which the kernel reports
as ``IN_MOVED_TO`` on the cache directory, so the benchmark sleeps in read(2) instead of polling
(a polling loop would steal a core from the daemon on a 2-core machine).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import MiB, Result, bootwatch_env, run_bootwatch, sync, temp_dir, write_config, write_random_file
from bench.sizes import Sizes

IN_MOVED_TO = 0x00000080
IN_CLOEXEC = 0o2000000
INDEX_NAME = "cacheindex.json"


class IndexCommits:
    """inotify on the cache directory: each rename of ``cacheindex.json`` into place is a commit."""

    def __init__(self, cache_dir: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, os.fsencode(cache_dir), IN_MOVED_TO) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, "inotify_add_watch", str(cache_dir))
        self.index = cache_dir / INDEX_NAME

    def __enter__(self) -> IndexCommits:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def wait(self, timeout: float) -> float | None:
        """Block until the next commit; return its ``perf_counter`` time, None on timeout."""
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            data = os.read(self.fd, 65536)
            now = time.perf_counter()
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + length].rstrip(b"\0")
                offset += 16 + length
                if name == INDEX_NAME.encode():
                    return now

    def load(self) -> dict:
        return json.loads(self.index.read_bytes())


class Daemon:
    """``bootwatch run`` in a subprocess, started and stopped (SIGTERM) by a ``with`` block."""

    def __init__(self, config: Path, runtime: Path) -> None:
        self.config = config
        self.runtime = runtime
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Daemon:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC))
            # An abstract address (no file): a path under a deep $TMPDIR can exceed sun_path's 108 bytes.
            name = f"bootwatch-bench-{os.getpid()}-{time.monotonic_ns()}"
            sock.bind("\0" + name)
            env = bootwatch_env()
            env["NOTIFY_SOCKET"] = "@" + name
            self.log = stack.enter_context(open(self.runtime / "daemon.log", "wb"))
            self.proc = subprocess.Popen([sys.executable, "-m", "bootwatch", "--config", str(self.config), "run"],
                                         env=env, stdout=self.log, stderr=subprocess.STDOUT)
            stack.callback(self._stop)
            deadline = time.monotonic() + 600
            while b"READY=1" not in self._receive(sock, deadline):
                pass
            stack.pop_all()
        return self

    def _receive(self, sock: socket.socket, deadline: float) -> bytes:
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"bootwatch run exited with {self.proc.returncode} before READY=1: "
                                   f"{self.log_tail()}")
            if select.select([sock], [], [], 0.5)[0]:
                return sock.recv(4096)
        raise RuntimeError(f"bootwatch run sent no READY=1 in time: {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.runtime / "daemon.log").read_text(errors="replace")[-2000:]
        return ""

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    # ---------------------------------------------------------------- /proc figures

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process (all its threads), from /proc/PID/stat."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict:
        assert self.proc is not None
        values = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) * 1024
        return values


@contextlib.contextmanager
def daemon_tree(prefix: str, *, track: str = "referenced") -> Iterator[tuple]:
    """A temp boot directory, its config and runtime directory."""
    with temp_dir(prefix) as tmp:
        boot = tmp / "boot"
        (boot / "loader" / "entries").mkdir(parents=True)
        runtime = tmp / "run"
        runtime.mkdir(mode=0o700)
        cache = tmp / "cache"
        config = write_config(tmp / "bootwatch.toml", boot, cache, runtime, track=track)
        yield tmp, boot, cache, config, runtime


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p % of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


# ------------------------------------------------------------------------------------ target 3

SETTLE = 0.25  # the default [watch] settle


def target_latency(sizes: Sizes) -> list[Result]:
    """From closing a new referenced image to the index commit that lists it, in the daemon."""
    latencies: list[float] = []
    baselines: list[float] = []
    with daemon_tree("latency") as (tmp, boot, cache, config, runtime):
        source = tmp / "source"
        write_random_file(source, sizes.latency_image, seed=3)
        data = source.read_bytes()
        # Start from a quiet disk: the writeback of the gigabyte that targets 1 and 2 wrote would
        # otherwise stall the fsyncs of the first runs here, which is not this target's cost.
        sync()
        with Daemon(config, runtime) as daemon, IndexCommits(cache) as commits:
            for n in range(sizes.latency_runs):
                path = f"/vmlinuz-6.1.{n}-lat"
                content = n.to_bytes(8, "little") + data[8:]
                # The entry first, and let its burst settle: the image is then a new referenced file.
                (boot / "loader" / "entries" / f"lat-{n}.conf").write_text(
                    f"title lat {n}\nversion 6.1.{n}-lat\nlinux {path}\noptions ro\n")
                commits.wait(SETTLE * 4)  # the entry's own batch (if it commits anything)
                with open(boot / path.lstrip("/"), "wb") as f:
                    f.write(content)
                closed = time.perf_counter()
                while True:
                    committed = commits.wait(30)
                    if committed is None:
                        raise RuntimeError(f"target 3: {path} was not indexed within 30 s: {daemon.log_tail()}")
                    if path in commits.load()["index"]:
                        break
                latencies.append(committed - closed)
                start = time.perf_counter()
                with open(boot / path.lstrip("/"), "rb") as f:
                    hashlib.file_digest(f, "sha1")
                baselines.append(time.perf_counter() - start)
                # Each run starts from a quiet disk, outside the measured window. The writer here does
                # not fsync (as cp and install do not), so 30 runs leave ~2 GiB dirty in 45 s; the
                # flusher writes back each source 30 s (dirty_expire) after it was written, and a run
                # whose image fsync queues behind that writeback (~200 MiB) takes 250 ms longer. That
                # is the cost of the benchmark's earlier writes, not of this run: bench/RESULTS.md
                # has the trace.
                sync()
    base = min(baselines)
    limit = SETTLE + 2 * base
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    mib = sizes.latency_image / MiB
    notes = [f"settle {SETTLE * 1000:.0f} ms; baseline: SHA1 of the same file (best of {len(baselines)}); "
             f"limit settle + 2 x baseline = {limit * 1000:.1f} ms; the disk is synced between runs",
             "latencies (ms, sorted): " + " ".join(f"{x * 1000:.0f}" for x in sorted(latencies))]
    return [
        Result("3-p50", f"close -> index commit, {mib:.0f} MiB image, {len(latencies)} runs", p50, base, "s",
               p50 / base, f"<= {limit * 1000:.0f} ms", p50 <= limit, notes),
        Result("3-p99", f"close -> index commit, {mib:.0f} MiB image, {len(latencies)} runs", p99, base, "s",
               p99 / base, f"<= {limit * 1000:.0f} ms", p99 <= limit, []),
    ]


# ------------------------------------------------------------------------------------ targets 5, 6


def storm(boot: Path, count: int, size: int, seconds: float) -> float:
    """Create ``count`` files spread evenly over ``seconds``; return the time the last was closed."""
    block = os.urandom(size)
    start = time.perf_counter()
    for n in range(count):
        due = start + seconds * n / count
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        with open(boot / f"vmlinuz-storm-{n}", "wb") as f:
            f.write(n.to_bytes(8, "little") + block[8:])
    return time.perf_counter()


def indexed(commits: IndexCommits, expected: set[str]) -> int:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return len(expected & commits.load()["index"].keys())
    return 0


def target_storm_and_idle(sizes: Sizes) -> list[Result]:
    """5: a storm of new files with ``track = "all"``; 6: then the same daemon idle, tracking them."""
    results: list[Result] = []
    n = sizes.tree_files
    expected = {f"/vmlinuz-storm-{i}" for i in range(n)}
    with daemon_tree("storm", track="all") as (tmp, boot, cache, config, runtime):
        with Daemon(config, runtime) as daemon, IndexCommits(cache) as commits:
            started = time.perf_counter()
            ended = storm(boot, n, sizes.storm_file_size, sizes.storm_seconds)
            done: float | None = None
            count = 0
            deadline = time.perf_counter() + 600
            while time.perf_counter() < deadline:
                committed = commits.wait(deadline - time.perf_counter())
                if committed is None:
                    break
                count = indexed(commits, expected)
                if count == n:
                    done = committed
                    break
            if done is None:
                raise RuntimeError(f"target 5: only {count} of {n} files indexed: {daemon.log_tail()}")
            # 6: let the last batch and any retries finish, then measure a quiet period.
            time.sleep(max(1.0, sizes.idle_seconds / 20))
            cpu0, wall0 = daemon.cpu_seconds(), time.perf_counter()
            time.sleep(sizes.idle_seconds)
            cpu1, wall1 = daemon.cpu_seconds(), time.perf_counter()
            memory = daemon.memory()
            tracked = len(commits.load()["index"])
        # The baseline: 'bootwatch scan' of the same tree into an empty cache.
        scan_config = write_config(tmp / "scan.toml", boot, tmp / "scan-cache", runtime, track="all")
        start = time.perf_counter()
        run_bootwatch(scan_config, "scan", "--quiet")
        scan = time.perf_counter() - start
        scanned = json.loads((tmp / "scan-cache" / INDEX_NAME).read_bytes())["index"]
        if not expected <= scanned.keys():
            raise RuntimeError(f"target 5: the scan indexed {len(expected & scanned.keys())} of {n} files")
    after = done - ended
    ratio = after / scan
    results.append(Result(
        "5", f"storm: {n} files in {sizes.storm_seconds:g} s, track=all, until all indexed", after, scan, "s",
        ratio, "ratio <= 1.5, all indexed", ratio <= 1.5 and count == n,
        [f"{count} of {n} indexed (checked in the committed index); measured from the last file's close; "
         f"from the storm's start: {done - started:.2f} s", "baseline: the 'bootwatch scan' command, empty index"]))
    cpu = (cpu1 - cpu0) / (wall1 - wall0) * 100
    rss = memory.get("VmRSS", 0) / MiB
    results.append(Result("6-cpu", f"idle {wall1 - wall0:.0f} s, {tracked} tracked paths: CPU", cpu, None,
                          "% of a core", None, "<= 0.1 %", cpu <= 0.1,
                          [f"CPU time {cpu1 - cpu0:.2f} s over {wall1 - wall0:.1f} s (utime+stime, all threads)"]))
    results.append(Result("6-rss", f"idle, {tracked} tracked paths: RSS", rss, None, "MiB", None, "<= 60 MiB",
                          rss <= 60, [f"peak RSS (VmHWM) {memory.get('VmHWM', 0) / MiB:.1f} MiB, "
                                      "includes the storm"]))
    return results
