"""Pins and their garbage collection, with real processes, real signals and the real command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import wait_until

from bootwatch.cache.operations import BootCache
from bootwatch.cache.pins import Owner, PinLink, boot_id, gc, pin, process_start_time

REPO_ROOT = Path(__file__).resolve().parents[2]
KERNEL = "/vmlinuz-6.1.0-pintest"


@pytest.fixture
def cache(tmp_path: Path) -> BootCache:
    """A boot directory with one kernel that no BLS entry references, cached (and one that an
    entry references: references without a record are known only by such evidence)."""
    boot = tmp_path / "boot"
    (boot / "loader" / "entries").mkdir(parents=True)
    (boot / KERNEL[1:]).write_bytes(b"kernel image for pin tests\n" * 100)
    (boot / "vmlinuz-booted").write_bytes(b"the kernel an entry names\n")
    (boot / "loader" / "entries" / "booted.conf").write_text("linux /vmlinuz-booted\n")
    c = BootCache(boot, boot / "loader" / "entries", tmp_path / "cache")
    c.add([KERNEL, "/vmlinuz-booted"])
    return c


def run_cli(cache: BootCache, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("BOOTWATCH_PIN_0", None)
    argv = [sys.executable, "-m", "bootwatch", "--config", "/dev/null", "--boot-dir", str(cache.boot_dir),
            "--cache-dir", str(cache.store.directory), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, **kwargs)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def link_names(cache: BootCache) -> list[str]:
    return sorted(os.listdir(cache.store.links_dir)) if cache.store.links_dir.exists() else []


def test_pin_survives_clean_and_is_removed_on_exit(cache: BootCache) -> None:
    image_id = cache.load_index().newest(KERNEL)
    with pin(cache, paths=[KERNEL]) as links:
        assert [p.name.split(".")[0] for p in links] == [image_id]
        assert links[0].read_bytes() == cache.store.image_path(image_id).read_bytes()
        assert os.stat(links[0]).st_ino == os.stat(cache.store.image_path(image_id)).st_ino
        report = cache.clean()
        assert KERNEL in report.kept_pinned
        assert KERNEL in cache.load_index(), "clean uncached a pinned path"
        assert cache.store.has_image(image_id)
        assert (os.stat(cache.store.links_dir).st_mode & 0o777) == 0o700
    assert link_names(cache) == []
    report = cache.clean()
    assert report.uncached_paths == [KERNEL]
    assert not cache.store.has_image(image_id)


def test_link_name_records_the_owner(cache: BootCache) -> None:
    with pin(cache, paths=[KERNEL]) as links:
        parsed = PinLink.parse(links[0].name)
        assert parsed is not None
        assert parsed.owner == Owner(os.getpid(), process_start_time(os.getpid()), boot_id())


def test_pin_of_an_uncached_path_fails_and_leaves_nothing(cache: BootCache) -> None:
    from bootwatch.errors import BootwatchError
    with pytest.raises(BootwatchError, match="not cached"), pin(cache, paths=[KERNEL, "/vmlinuz-not-cached"]):
        pass
    assert link_names(cache) == []


def test_gc_removes_the_link_of_a_killed_owner(cache: BootCache) -> None:
    # A real process makes the pin and is killed with SIGKILL: its context manager never exits.
    code = (
        "import sys, time\n"
        "from bootwatch.cache.operations import BootCache\n"
        "from bootwatch.cache.pins import pin\n"
        f"c = BootCache({str(cache.boot_dir)!r}, {str(cache.entries_dir)!r}, {str(cache.store.directory)!r})\n"
        f"with pin(c, paths=[{KERNEL!r}]):\n"
        "    print('pinned', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "pinned\n"
        [name] = link_names(cache)
        assert PinLink.parse(name).owner.pid == proc.pid
        report = gc(cache)
        assert report.kept == [name] and report.removed == [], "gc removed a live owner's link"
        proc.kill()
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
    assert gc(cache, dry_run=True).removed == [name]
    assert link_names(cache) == [name], "a dry run removed something"
    report = gc(cache)
    assert report.removed == [name]
    assert link_names(cache) == []


def test_gc_removes_a_link_whose_pid_was_reused(cache: BootCache, sleeper: subprocess.Popen) -> None:
    # The link names a live PID, but a start time that PID did not have: the owner died and the
    # PID went to the sleeper. gc must not keep the link for as long as the sleeper lives.
    real = Owner.of(sleeper.pid)
    image_id = cache.load_index().newest(KERNEL)
    reused = Owner(real.pid, real.start_time - 1, real.boot_id)
    other_boot = Owner(real.pid, real.start_time, "0" * 32)
    with pin(cache, paths=[KERNEL], owner_pid=sleeper.pid) as [live]:
        links_dir = cache.store.links_dir
        fake = links_dir / PinLink.make_name(image_id, reused, 0)
        old_boot = links_dir / PinLink.make_name(image_id, other_boot, 0)
        os.link(cache.store.image_path(image_id), fake)
        os.link(cache.store.image_path(image_id), old_boot)
        report = gc(cache)
        assert sorted(report.removed) == sorted([fake.name, old_boot.name])
        assert report.kept == [live.name]
        assert link_names(cache) == [live.name]
    assert sleeper.poll() is None


def test_gc_leaves_names_it_does_not_know(cache: BootCache) -> None:
    image_id = cache.load_index().newest(KERNEL)
    with pin(cache, paths=[KERNEL]):
        odd = cache.store.links_dir / f"{image_id}.handmade"
        os.link(cache.store.image_path(image_id), odd)
    report = gc(cache)
    assert report.unknown == [odd.name] and report.removed == []
    assert odd.exists()


def test_cli_pin_runs_command_with_the_pinned_file(cache: BootCache, tmp_path: Path) -> None:
    out = tmp_path / "seen"
    script = f'printf "%s\\n" "$BOOTWATCH_PIN_0" > {out}; cat "$BOOTWATCH_PIN_0" >> {out}; exit 7'
    result = run_cli(cache, "pin", "--path", KERNEL, "--", "sh", "-c", script)
    assert result.returncode == 7, result.stderr
    first, rest = out.read_text().split("\n", 1)
    assert Path(first).parent == cache.store.links_dir
    assert rest == (cache.boot_dir / KERNEL[1:]).read_text()
    assert link_names(cache) == [], "bootwatch pin left its link behind"


@pytest.mark.slow
def test_cli_pin_reports_errors(cache: BootCache) -> None:
    result = run_cli(cache, "pin", "--path", "/vmlinuz-nope", "--", "true")
    assert result.returncode == 1 and "not cached" in result.stderr
    result = run_cli(cache, "pin", "--path", KERNEL, "--", "/nonexistent/command")
    assert result.returncode == 127 and "cannot run" in result.stderr
    assert link_names(cache) == []
    result = run_cli(cache, "pin", "--path", KERNEL)
    assert result.returncode == 2


def test_cli_pin_forwards_sigterm(cache: BootCache, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "bootwatch", "--config", "/dev/null", "--boot-dir",
                             str(cache.boot_dir), "--cache-dir", str(cache.store.directory), "pin", "--path",
                             KERNEL, "--", "sh", "-c",
                             f"trap 'exit 42' TERM; touch {ready}; while :; do sleep 0.1; done"],
                            env=env)
    try:
        assert wait_until(ready.exists)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 42
    finally:
        proc.kill()
        proc.wait()
    assert link_names(cache) == []


def test_pin_outlives_a_killed_bootwatch_pin(cache: BootCache, tmp_path: Path) -> None:
    ready, release, done = tmp_path / "ready", tmp_path / "release", tmp_path / "done"
    script = (f'echo $$ > {ready}.tmp; mv {ready}.tmp {ready}; '
              f'while [ ! -e {release} ]; do sleep 0.05; done; '
              f'cat "$BOOTWATCH_PIN_0" > {done}')
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "bootwatch", "--config", "/dev/null", "--boot-dir",
                             str(cache.boot_dir), "--cache-dir", str(cache.store.directory), "pin", "--path",
                             KERNEL, "--", "sh", "-c", script], env=env)
    command_pid = None
    try:
        assert wait_until(ready.exists)
        command_pid = int(ready.read_text())
        proc.kill()  # SIGKILL: bootwatch pin can neither forward nor clean up
        proc.wait()
        [name] = link_names(cache)
        assert PinLink.parse(name).owner.pid == command_pid
        assert gc(cache).kept == [name], "gc removed the pin of a running COMMAND"
        assert KERNEL in cache.clean().kept_pinned
        release.touch()
        assert wait_until(done.exists)
        assert wait_until(lambda: process_start_time(command_pid) is None)
    finally:
        release.touch()
        proc.kill()
        proc.wait()
    assert done.read_text() == (cache.boot_dir / KERNEL[1:]).read_text()
    assert gc(cache).removed == [name]
    assert link_names(cache) == []


@pytest.mark.slow
def test_cli_gc_json(cache: BootCache, sleeper: subprocess.Popen) -> None:
    with pin(cache, paths=[KERNEL], owner_pid=sleeper.pid) as [link]:
        result = run_cli(cache, "gc", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"removed": [], "kept": [link.name], "unknown": []}
        sleeper.kill()
        sleeper.wait()
        result = run_cli(cache, "gc", "--dry-run")
        assert result.returncode == 0 and f"would remove {link.name}" in result.stdout
        result = run_cli(cache, "gc")
        assert f"removed {link.name}" in result.stdout
        assert not link.exists()
