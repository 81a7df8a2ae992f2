"""The loop-device helper and the read-only mount, on real loop devices (root only)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import imagefactory
import pytest
from polling import wait_until

from bootwatch.errors import BootwatchError
from bootwatch.verify.loop import LOOP_CTL_GET_FREE, _open_node, attached_loop, bind_legacy, loop_info
from bootwatch.verify.mount import MountError, UnknownFilesystemError, mounted_image, mounts_under, sweep_stale_mounts

REPO = Path(__file__).resolve().parents[2]

needs_loop = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/dev/loop-control").exists(),
    reason="needs root and /dev/loop-control to attach real loop devices")

pytestmark = [pytest.mark.root, needs_loop]


def backing_devices(directory: Path) -> list[str]:
    """``losetup -a`` lines for devices backed by files under ``directory``."""
    out = subprocess.run(["losetup", "-a"], check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(directory) in line]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")])
    return env


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "plain.img"
    with open(path, "wb") as f:
        f.write(os.urandom(8192))
        f.truncate(4 << 20)
    return path


def assert_bound_read_only_autoclear(name: str, image: Path) -> None:
    """``/dev/NAME`` is ``image`` from 4096 for 1 MiB, read-only, autoclear, no direct I/O."""
    loop = Path(f"/sys/block/{name}/loop")
    assert (loop / "backing_file").read_text().strip() == str(image)
    assert (loop / "offset").read_text().strip() == "4096"
    assert (loop / "sizelimit").read_text().strip() == str(1 << 20)
    assert (loop / "autoclear").read_text().strip() == "1"
    assert (loop / "dio").read_text().strip() == "0"
    assert Path(f"/sys/block/{name}/ro").read_text().strip() == "1"
    with open(f"/dev/{name}", "rb") as f:
        assert f.read(4096) == image.read_bytes()[4096:8192]
        assert f.seek(0, os.SEEK_END) == 1 << 20
    # Opening for writing may succeed; the write itself must not.
    with pytest.raises(OSError):
        fd = os.open(f"/dev/{name}", os.O_WRONLY)
        try:
            os.write(fd, b"x" * 512)
            os.fsync(fd)
        finally:
            os.close(fd)
    assert image.read_bytes()[4096:4608] != b"x" * 512


def test_attach_is_read_only_autoclear_with_offset(image: Path) -> None:
    with attached_loop(image, offset=4096, sizelimit=1 << 20) as device:
        assert_bound_read_only_autoclear(device.path.name, image)
        name = device.path.name
    assert not Path(f"/sys/block/{name}/loop").exists() or \
        Path(f"/sys/block/{name}/loop/backing_file").read_text().strip() != str(image)
    assert backing_devices(image.parent) == []


def test_the_legacy_binding_is_read_only_autoclear_with_offset(image: Path) -> None:
    """What attached_loop does on a kernel before 5.8 (LOOP_CONFIGURE answers EINVAL there),
    done here on a free device of this kernel."""
    with contextlib.ExitStack() as stack:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        stack.callback(os.close, ctl)
        dev_dir = os.open("/dev", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        stack.callback(os.close, dev_dir)
        backing = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
        stack.callback(os.close, backing)
        for _ in range(20):  # another process may take the free device first (EBUSY): ask again
            minor = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            dev_fd = _open_node(dev_dir, minor)
            try:
                bind_legacy(dev_fd, backing, loop_info(4096, 1 << 20))
                break
            except OSError as err:
                os.close(dev_fd)
                if err.errno != errno.EBUSY:
                    raise
        else:
            pytest.fail("no free loop device")
        stack.callback(os.close, dev_fd)  # the last opener of an autoclear device unbinds it
        assert_bound_read_only_autoclear(f"loop{minor}", image)
    assert backing_devices(image.parent) == []


def test_device_is_locked_against_udev_while_attached(image: Path) -> None:
    with attached_loop(image) as device:
        fd = os.open(device.path, os.O_RDONLY)
        try:
            # systemd-udevd probes only when it gets LOCK_SH|LOCK_NB.
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert backing_devices(image.parent) == []


def test_detached_when_the_body_raises(image: Path) -> None:
    with pytest.raises(RuntimeError), attached_loop(image):
        assert len(backing_devices(image.parent)) == 1
        raise RuntimeError("boom")
    assert backing_devices(image.parent) == []


def test_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BootwatchError, match="not a regular file"), attached_loop(tmp_path):
        pass


def test_node_that_is_not_the_loop_device_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "dev"
    fake.mkdir()
    os.mknod(fake / "loop0", 0o600 | 0o020000, os.makedev(1, 3))  # a char device: /dev/null
    dir_fd = os.open(fake, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BootwatchError, match="not the loop device"):
            _open_node(dir_fd, 0)
    finally:
        os.close(dir_fd)


def test_killed_holder_leaves_no_device(image: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from bootwatch.verify.loop import attached_loop
        with attached_loop(Path({str(image)!r})) as device:
            print(device.path, flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env=child_env())
    assert child.stdout is not None
    assert child.stdout.readline().startswith("/dev/loop")
    assert len(backing_devices(image.parent)) == 1
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert wait_until(lambda: backing_devices(image.parent) == [])


def test_two_processes_never_share_a_device(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import json, sys, time
        from pathlib import Path
        from bootwatch.verify.loop import attached_loop
        image = Path(sys.argv[1])
        used = []
        for _ in range(40):
            with attached_loop(image) as device:
                backing = Path(f"/sys/block/{device.path.name}/loop/backing_file").read_text()
                assert backing.strip() == str(image), (backing, image)
                used.append(device.path.name)
                time.sleep(0.002)
        print(json.dumps(used))
    """)
    images = []
    for name in ("a.img", "b.img"):
        path = tmp_path / name
        path.write_bytes(name.encode() * 4096)
        images.append(path)
    children = [subprocess.Popen([sys.executable, "-c", script, str(path)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=child_env()) for path in images]
    results = [child.communicate(timeout=120) for child in children]
    for child, (out, err) in zip(children, results):
        assert child.returncode == 0, err
        assert len(json.loads(out)) == 40
    assert backing_devices(tmp_path) == []


# --- mount -------------------------------------------------------------------------------------

@pytest.fixture
def ext4(tmp_path: Path) -> Path:
    tree = imagefactory.make_tree(tmp_path / "tree")
    return imagefactory.build_ext4(tmp_path / "good.img", tree)


def test_mount_is_read_only_nosuid_nodev_noexec_and_private(ext4: Path, tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    with mounted_image(ext4, runtime) as point:
        assert point.parent == runtime / "mnt"
        # The mount hides the 0700 directory below it; its parent is 0700 too.
        assert (point.parent.stat().st_mode & 0o777) == 0o700
        assert (point / "hello.txt").read_text() == "hello\n"
        line = next(line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                    if line.split()[4] == str(point))
        options = line.split()[5].split(",")
        assert {"ro", "nosuid", "nodev", "noexec"} <= set(options)
        optional = line.split(" - ")[0].split()[6:]
        assert not any(field.startswith("shared:") for field in optional)
        with pytest.raises(OSError):
            (point / "new").write_text("x")
    assert mounts_under(runtime) == []
    assert os.listdir(runtime / "mnt") == []
    assert backing_devices(tmp_path) == []


def test_unknown_filesystem_is_not_mounted(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(UnknownFilesystemError, match="no known filesystem"), mounted_image(junk, tmp_path / "run"):
        pass
    assert backing_devices(tmp_path) == []


def test_stale_mount_of_a_killed_process_is_swept(ext4: Path, tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from bootwatch.verify.mount import mounted_image
        with mounted_image(Path({str(ext4)!r}), Path({str(runtime)!r})) as point:
            print(point, flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env=child_env())
    assert child.stdout is not None
    point = Path(child.stdout.readline().strip())
    assert mounts_under(runtime) == [point]
    child.kill()
    child.wait()
    child.stdout.close()
    # The kernel keeps the mount (and so the loop device) after SIGKILL ...
    assert mounts_under(runtime) == [point]
    # ... until the next bootwatch mount, or an explicit sweep, notices its owner is gone.
    assert sweep_stale_mounts(runtime) == [point]
    assert mounts_under(runtime) == []
    assert wait_until(lambda: backing_devices(tmp_path) == [])


@pytest.mark.slow
def test_200_cycles_with_failures_leave_nothing_behind(tmp_path: Path) -> None:
    tree = imagefactory.make_tree(tmp_path / "tree")
    good = imagefactory.build_ext4(tmp_path / "good.img", tree)
    bad = imagefactory.build_ext4(tmp_path / "bad.img", tree)
    imagefactory.flip_bytes(bad, 1024, 16)  # inode and block counts of the superblock
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(64 * 1024))
    runtime = tmp_path / "run"
    killer = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from bootwatch.verify.mount import mounted_image
        with mounted_image(Path({str(good)!r}), Path({str(runtime)!r})) as point:
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    counts = {"ok": 0, "bad": 0, "unknown": 0, "busy": 0, "killed": 0, "interrupted": 0}
    # A shell starts background jobs with SIGINT ignored; make Ctrl-C raise KeyboardInterrupt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run_cycles(good, bad, junk, runtime, killer, counts)
    finally:
        signal.signal(signal.SIGINT, previous)
    sweep_stale_mounts(runtime)
    assert sum(counts.values()) == 200 and min(counts.values()) >= 33
    assert mounts_under(runtime) == []
    assert str(runtime) not in Path("/proc/self/mountinfo").read_text()
    assert os.listdir(runtime / "mnt") == []
    assert wait_until(lambda: backing_devices(tmp_path) == []), backing_devices(tmp_path)


def run_cycles(good: Path, bad: Path, junk: Path, runtime: Path, killer: str,
               counts: dict) -> None:
    for cycle in range(200):
        step = cycle % 6
        if step == 0:
            with mounted_image(good, runtime) as point:
                assert (point / "hello.txt").read_text() == "hello\n"
            counts["ok"] += 1
        elif step == 1:
            with pytest.raises(MountError, match="does not mount|cannot mount"), mounted_image(bad, runtime):
                pass
            counts["bad"] += 1
        elif step == 2:
            with pytest.raises(UnknownFilesystemError), mounted_image(junk, runtime):
                pass
            counts["unknown"] += 1
        elif step == 3:
            # A child keeps a file open inside the mount: umount gets EBUSY, then detaches lazily.
            with mounted_image(good, runtime, busy_timeout=0.02) as point, open(point / "hello.txt", "rb") as held:
                holder = subprocess.Popen(["sleep", "60"], stdin=held)
            holder.kill()
            holder.wait()
            counts["busy"] += 1
        elif step == 4:
            # The verifier itself is killed while mounted; the next cycle sweeps its mount.
            child = subprocess.run([sys.executable, "-c", killer], env=child_env())
            assert child.returncode == -signal.SIGKILL
            counts["killed"] += 1
        else:
            # A real SIGINT in the middle of the body: KeyboardInterrupt, and still clean.
            with pytest.raises(KeyboardInterrupt), mounted_image(good, runtime):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            counts["interrupted"] += 1
        if step != 4:
            assert mounts_under(runtime) == [], f"cycle {cycle}"
