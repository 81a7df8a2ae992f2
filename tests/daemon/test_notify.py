"""bootwatch.daemon.notify: sd_notify datagrams read from a real NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootwatch.daemon.notify import SystemdNotifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = tmp_path / "notify.socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield str(path), sock
    finally:
        sock.close()


def notifier_at(monkeypatch: pytest.MonkeyPatch, address: str | None) -> SystemdNotifier:
    """A notifier for ``$NOTIFY_SOCKET`` = ``address`` (unset if None): sdnotify reads it from the
    process environment, as under systemd."""
    if address is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", address)
    return SystemdNotifier()


def datagram(sock: socket.socket) -> dict[str, str]:
    """One datagram as systemd reads it: newline-separated KEY=value."""
    data = sock.recv(4096).decode()
    pairs = [line.split("=", 1) for line in data.split("\n")]
    assert all(len(pair) == 2 for pair in pairs), data
    return dict(pairs)  # type: ignore[arg-type]


def assert_no_more(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
    finally:
        sock.settimeout(5)


def test_messages(notify_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    address, sock = notify_socket
    with notifier_at(monkeypatch, address) as notifier:
        notifier.ready()
        assert datagram(sock) == {"READY": "1"}
        notifier.ready(status="watching /boot: 3 cached")
        assert datagram(sock) == {"READY": "1", "STATUS": "watching /boot: 3 cached"}
        notifier.status("two\nlines")
        assert datagram(sock) == {"STATUS": "two lines"}
        notifier.watchdog()
        assert datagram(sock) == {"WATCHDOG": "1"}
        notifier.stopping()
        assert datagram(sock) == {"STOPPING": "1"}
        notifier.status("bööt ✓")
        assert datagram(sock) == {"STATUS": "bööt ✓"}  # UTF-8, not dropped by latin-1
    assert_no_more(sock)


def test_reloading_is_one_datagram_with_monotonic_time(
        notify_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    address, sock = notify_socket
    notifier = notifier_at(monkeypatch, address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = datagram(sock)
    assert set(message) == {"RELOADING", "MONOTONIC_USEC"}
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after
    notifier.close()


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"bootwatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier_at(monkeypatch, "@" + name).ready()
        assert datagram(sock) == {"READY": "1"}


def test_without_notify_socket_everything_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for address in (None, "", str(tmp_path / "nobody-listens")):
        notifier = notifier_at(monkeypatch, address)
        notifier.ready("x")
        notifier.reloading()
        notifier.stopping()
        notifier.watchdog()
        notifier.status("x")
    assert list(tmp_path.iterdir()) == [], "a notifier without a listener created a socket"


def test_listener_gone_is_not_an_error(notify_socket: tuple[str, socket.socket],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    address, sock = notify_socket
    notifier = notifier_at(monkeypatch, address)
    sock.close()
    os.unlink(address)
    notifier.watchdog()  # ECONNREFUSED is swallowed: systemd going away must not kill us


def test_watchdog_interval() -> None:
    pid = str(os.getpid())
    assert SystemdNotifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() == 15.0
    assert SystemdNotifier({"WATCHDOG_USEC": "30000000",
                            "WATCHDOG_PID": pid}).watchdog_interval() == 15.0
    assert SystemdNotifier({"WATCHDOG_USEC": "30000000",
                            "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval() is None
    assert SystemdNotifier({}).watchdog_interval() is None
    assert SystemdNotifier({"WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert SystemdNotifier({"WATCHDOG_USEC": "soon"}).watchdog_interval() is None


def test_from_process_environment(notify_socket: tuple[str, socket.socket],
                                  tmp_path: Path) -> None:
    """A child process finds NOTIFY_SOCKET in its real environment, as under systemd."""
    address, sock = notify_socket
    code = "from bootwatch.daemon.notify import SystemdNotifier; SystemdNotifier().ready('child')"
    env = dict(os.environ, NOTIFY_SOCKET=address)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[2])
    assert datagram(sock) == {"READY": "1", "STATUS": "child"}



def fill_queue(address: str) -> list:
    """Queue datagrams at ``address`` until the receiver's queue is full (not just one sender's buffer):
    new senders until a fresh one cannot queue even one."""
    senders = []
    while True:
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.connect(address)
        sender.setblocking(False)
        senders.append(sender)
        sent = 0
        try:
            while True:
                sender.send(b"X=1")
                sent += 1
        except BlockingIOError:
            pass
        if sent == 0:
            return senders


@pytest.mark.slow
def test_a_full_queue_drops_the_message_instead_of_blocking(notify_socket: tuple[str, socket.socket],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A systemd that stops reading must not stop the daemon: a send gives up after a bound."""
    address, sock = notify_socket
    senders = fill_queue(address)
    try:
        with notifier_at(monkeypatch, address) as notifier:
            done = threading.Event()

            def notify_a_few() -> None:
                for _ in range(3):
                    notifier.watchdog()
                done.set()

            threading.Thread(target=notify_a_few, daemon=True).start()
            # Unbounded, the first send blocks until someone reads the queue.
            assert done.wait(30), "a notification blocked on systemd's full queue"
    finally:
        for sender in senders:
            sender.close()
