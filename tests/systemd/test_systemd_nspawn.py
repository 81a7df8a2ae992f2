"""bootwatch under a real systemd 252: Type=notify start, journal fields, watchdog, reload, stop.

Every test here drives the shipped unit in a booted container (see conftest.py) with systemctl
and reads systemd's own view of it: unit properties and the journal. Where a test needs to see a
short-lived state, it switches PID 1 to debug logging, so that each unit state change ("Changed
running -> reload") and each sd_notify message ("Got notification message from PID ...") becomes
a journal record to assert on, instead of polling for the state, which would be racy.

The tests run in file order and share one container and one daemon; each starts from the state
the previous one leaves (the daemon running), and the last one stops it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from nspawn_container import Container, wait_until
from nspawn_testbed import INITRAMFS, KERNEL, UNIT, sha1

from bootwatch.log import Event

pytestmark = pytest.mark.slow

# MESSAGE_IDs of systemd's own records (systemd/sd-messages.h).
SD_MESSAGE_UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"
SD_MESSAGE_UNIT_FAILURE_RESULT = "d9b373ed55a64feb8242e02dbe79a49c"
SD_MESSAGE_UNIT_SUCCESS = "7ad2d189f7e94e70a38c781354912448"

IMAGES = {"/vmlinuz-T": sha1(KERNEL), "/initramfs-T.img": sha1(INITRAMFS)}
CACHE = "/var/lib/bootwatch/cache"

Record = dict[str, object]


def unit_journal(ct: Container, after: str | None = None) -> list[Record]:
    """The unit's records: the daemon's own and PID 1's about the unit, oldest first."""
    args = ["-u", UNIT] + ([f"--after-cursor={after}"] if after else [])
    return ct.journal(*args)


def message(record: Record) -> str:
    # journalctl -o json gives non-UTF-8 or binary fields as byte arrays.
    value = record.get("MESSAGE", "")
    return bytes(value).decode(errors="replace") if isinstance(value, list) else str(value)


def from_daemon(record: Record) -> bool:
    return record.get("_SYSTEMD_UNIT") == UNIT and record.get("_PID") != "1"


def events(records: list[Record], event: Event, path: str | None = None) -> list[Record]:
    """The daemon's records of *event*, about boot *path* if given ("/vmlinuz-T", as in the
    cache index, or "/boot/vmlinuz-T")."""
    return [r for r in records if from_daemon(r) and r.get("MESSAGE_ID") == event.message_id
            and (path is None or str(r.get("BOOTWATCH_PATH", "")).endswith(path))]


def index_of(records: list[Record], predicate: object, what: str) -> int:
    for i, r in enumerate(records):
        if predicate(r):  # type: ignore[operator]
            return i
    dump = "\n".join(f"  {r.get('_PID')}: {message(r)}" for r in records[-40:])
    raise AssertionError(f"no journal record: {what}; the unit's last records:\n{dump}")


@contextlib.contextmanager
def pid1_debug_logging(ct: Container) -> Iterator[None]:
    """Make the container's systemd log at debug level for the duration.

    Never around a (re)start of the daemon: at debug level the freshly forked child logs before
    it execs the daemon, journald caches that PID's metadata from that moment (still in PID 1's
    cgroup), and the daemon's first records would then lose their _SYSTEMD_UNIT.
    """
    ct.run(["systemctl", "log-level", "debug"])
    try:
        yield
    finally:
        ct.run(["systemctl", "log-level", "info"])


def state(ct: Container) -> dict[str, str]:
    return ct.show(UNIT, "ActiveState", "SubState", "MainPID", "NRestarts", "Result",
                   "ReloadResult", "ExecMainCode", "ExecMainStatus", "StatusText")


def wait_running(ct: Container, timeout: float = 60) -> dict[str, str]:
    def probe() -> dict[str, str] | None:
        s = state(ct)
        return s if (s["ActiveState"], s["SubState"]) == ("active", "running") else None
    return wait_until(f"{UNIT} to be active (running)", probe, timeout)


def test_unit_passes_systemd_analyze_verify(container: Container) -> None:
    # As installed: the shipped unit, the test drop-in, and an ExecStart= that exists.
    proc = container.run(["systemd-analyze", "verify", f"/etc/systemd/system/{UNIT}"], check=False)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if "bootwatch" in line]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


def test_start_returns_only_after_ready(container: Container) -> None:
    assert state(container)["ActiveState"] == "inactive"
    cursor = container.journal_cursor()

    container.run(["systemctl", "start", UNIT], timeout=90)

    # Type=notify: the start job completes only on READY=1, so right after systemctl returns
    # the unit must be running, not "activating".
    s = state(container)
    assert (s["ActiveState"], s["SubState"]) == ("active", "running"), s
    records = unit_journal(container, cursor)
    started = index_of(records, lambda r: r.get("MESSAGE_ID") == SD_MESSAGE_UNIT_STARTED
                       and r.get("JOB_TYPE") == "start", "systemd's 'Started' for the unit")
    # The first reconcile finished before READY=1: both referenced images were cached by the
    # time PID 1 got READY=1 and logged "Started". The daemon's records and PID 1's go through
    # the same journal socket, so their order in the journal is the order they were sent in.
    for path in IMAGES:
        cached = events(records, Event.IMAGE_CACHED, path)
        assert cached, f"no IMAGE_CACHED record for {path} after start"
        assert records.index(cached[0]) < started, f"{path} was cached only after READY=1"


def test_journal_has_structured_fields(container: Container) -> None:
    records = [r for r in unit_journal(container) if from_daemon(r)]
    structured = [r for r in records if "MESSAGE_ID" in r]
    assert structured, "the daemon logged no record with a MESSAGE_ID"
    for path, image_id in IMAGES.items():
        about = [r for r in structured if str(r.get("BOOTWATCH_PATH", "")).endswith(path)]
        assert about, f"no record with BOOTWATCH_PATH for {path}"
        cached = events(about, Event.IMAGE_CACHED)
        assert cached, f"no IMAGE_CACHED record for {path}: {about}"
        assert cached[0].get("BOOTWATCH_IMAGE_ID") == image_id, cached[0]
        assert cached[0].get("BOOTWATCH_STATE"), f"no BOOTWATCH_STATE for {path}: {cached[0]}"
        # The record tells the truth: the image is in the cache, under its id.
        out = container.run(["sha1sum", f"{CACHE}/{image_id}.img"]).stdout
        assert out.split()[0] == image_id
    # Every MESSAGE_ID the daemon used is explained by the installed catalog (journalctl -x).
    catalog = container.run(["journalctl", "--list-catalog"]).stdout
    for message_id in {str(r["MESSAGE_ID"]) for r in structured}:
        assert message_id in catalog, f"MESSAGE_ID {message_id} is not in bootwatch.catalog"


def test_removed_kernel_is_restored(container: Container) -> None:
    wait_running(container)
    cursor = container.journal_cursor()
    container.run(["rm", "/boot/vmlinuz-T"])

    def restored() -> bool:
        out = container.run(["sha1sum", "/boot/vmlinuz-T"], check=False).stdout.split()
        return bool(out) and out[0] == IMAGES["/vmlinuz-T"]
    wait_until("/boot/vmlinuz-T to be restored", restored, timeout=60)
    restored_records = wait_until(
        "the IMAGE_RESTORED record",
        lambda: events(unit_journal(container, cursor), Event.IMAGE_RESTORED, "/vmlinuz-T"), 30)
    assert restored_records[0].get("BOOTWATCH_IMAGE_ID") == IMAGES["/vmlinuz-T"]


CAP_LEASE = 28  # linux/capability.h


def test_the_daemon_may_hold_read_leases(container: Container) -> None:
    """The unit keeps CAP_LEASE: bootwatch holds a read lease on every file it hashes, which the
    kernel grants on a file root does not own (an ESP mounted with uid=) only with it."""
    wait_running(container)
    pid = container.prop(UNIT, "MainPID")
    status = container.run(["cat", f"/proc/{pid}/status"]).stdout
    effective = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    assert effective & (1 << CAP_LEASE), f"CAP_LEASE is not effective in the daemon: CapEff {effective:x}"


def test_reload(container: Container) -> None:
    before = wait_running(container)
    cursor = container.journal_cursor()

    def notified(records: list[Record], what: str) -> list[int]:
        return [i for i, r in enumerate(records) if r.get("_PID") == "1"
                and "Got notification message" in message(r) and what in message(r)]

    def reload_done() -> list[Record] | None:
        # ExecReload (kill -HUP) returns at once, and so does systemctl reload: the daemon's
        # RELOADING=1 ... READY=1 comes after. Wait for both, in this order.
        records = unit_journal(container, cursor)
        reloading = notified(records, "RELOADING=1")
        ready = notified(records, "READY=1")
        return records if reloading and ready and ready[-1] > reloading[0] else None

    with pid1_debug_logging(container):
        container.run(["systemctl", "reload", UNIT], timeout=60)
        records = wait_until("the daemon to send RELOADING=1, then READY=1", reload_done, 60)
        after = wait_running(container)
    assert after["MainPID"] == before["MainPID"], "reload restarted the daemon"
    assert after["ReloadResult"] == "success"
    # systemd showed the unit as "reloading" and then "active" again.
    to_reload = index_of(records, lambda r: "Changed running -> reload" in message(r),
                         "the unit entering 'reloading'")
    index_of(records[to_reload:], lambda r: "Changed reload -> running" in message(r),
             "the unit leaving 'reloading'")
    assert events(records, Event.CONFIG_RELOADED), "no CONFIG_RELOADED record"


def test_watchdog_kills_and_restarts_a_stopped_daemon(container: Container) -> None:
    before = wait_running(container)
    cursor = container.journal_cursor()

    # A stopped process sends no WATCHDOG=1. systemd then sends SIGABRT (and SIGCONT, so that it
    # is delivered) and restarts the unit (Restart=on-failure).
    container.run(["kill", "-STOP", before["MainPID"]])

    def restarted() -> dict[str, str] | None:
        s = state(container)
        return s if int(s["NRestarts"]) > int(before["NRestarts"]) else None
    wait_until("systemd's watchdog to restart the daemon", restarted, timeout=60)
    after = wait_running(container)
    assert after["MainPID"] != before["MainPID"]
    records = unit_journal(container, cursor)
    index_of(records, lambda r: r.get("MESSAGE_ID") == SD_MESSAGE_UNIT_FAILURE_RESULT
             and r.get("UNIT_RESULT") == "watchdog", "\"Failed with result 'watchdog'\"")


def test_stop_exits_cleanly(container: Container) -> None:
    wait_running(container)
    cursor = container.journal_cursor()

    with pid1_debug_logging(container):
        container.run(["systemctl", "stop", UNIT], timeout=120)

    assert container.prop(UNIT, "ActiveState") == "inactive"
    # Not from the unit's properties: an inactive unit may be unloaded (garbage-collected) at
    # once, and a reloaded one shows no exit status. PID 1's records about the end remain.
    records = unit_journal(container, cursor)
    index_of(records, lambda r: "STOPPING=1" in message(r), "the daemon sending STOPPING=1")
    index_of(records, lambda r: "Main process exited, code=exited, status=0/SUCCESS" in message(r),
             "the daemon exiting with status 0 (not killed by a signal)")
    index_of(records, lambda r: r.get("MESSAGE_ID") == SD_MESSAGE_UNIT_SUCCESS,
             "systemd's 'Deactivated successfully'")
    assert not [message(r) for r in records if "SIGKILL" in message(r)
                or "timed out" in message(r)]


def test_scan_restores_reach_the_journal(container: Container) -> None:
    """The kernel-install plugin runs 'bootwatch scan --quiet' with the daemon stopped: its
    restore is in the journal, found by the same MESSAGE_ID query as the daemon's restores."""
    assert container.prop(UNIT, "ActiveState") == "inactive"
    container.run(["rm", "/boot/initramfs-T.img"])
    proc = container.run(["/usr/local/bin/bootwatch", "scan", "--quiet"])
    assert proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr
    out = container.run(["sha1sum", "/boot/initramfs-T.img"]).stdout.split()
    assert out[0] == IMAGES["/initramfs-T.img"]

    def restored() -> list[Record]:
        # The README's query for every restore. (Not combined with --after-cursor: systemd 252's
        # journalctl then finds nothing.) Only the daemon has restored anything before.
        return [r for r in container.journal(f"MESSAGE_ID={Event.IMAGE_RESTORED.message_id}")
                if str(r.get("BOOTWATCH_PATH", "")).endswith("/initramfs-T.img")]
    records = wait_until("the scan's IMAGE_RESTORED record in the journal", restored, 30)
    assert records[0].get("BOOTWATCH_COMMAND") == "scan", records[0]
    assert records[0].get("BOOTWATCH_IMAGE_ID") == IMAGES["/initramfs-T.img"]
    assert records[0].get("SYSLOG_IDENTIFIER") == "bootwatch"
