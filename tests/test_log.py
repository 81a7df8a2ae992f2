"""bootwatch.log: the native journal protocol on a real datagram socket, and stderr lines."""

from __future__ import annotations

import array
import fcntl
import io
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from journalentry import parse_entry

from bootwatch.log import (
    NOTICE,
    Event,
    JournalHandler,
    StderrHandler,
    choose_target,
    log_event,
    setup_logging,
    stream_is_journal,
)

MAX_DATAGRAM = 1 << 20


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A stand-in for /run/systemd/journal/socket: a bound datagram socket we read."""
    path = tmp_path / "journal.socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield path, sock
    finally:
        sock.close()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("bootwatch.test-journal")
    yield log
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_bootwatch", False):
            root.removeHandler(handler)
            handler.close()
    logging.getLogger("bootwatch").setLevel(logging.NOTSET)


def receive(sock: socket.socket, *, via_memfd: bool = False) -> dict[str, bytes]:
    """One journal entry, read like journald does: inline, or from a passed memfd."""
    data, ancillary, _flags, _addr = sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(4))
    assert bool(ancillary) == via_memfd
    if ancillary:
        level, kind, payload = ancillary[0]
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        assert data == b""
        fd = array.array("i", payload)[0]
        try:
            # journald refuses a descriptor that could still change.
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            wanted = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | \
                fcntl.F_SEAL_SEAL
            assert seals & wanted == wanted
            data = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    fields = parse_entry(data)
    names = [name for name, _ in fields]
    assert len(names) == len(set(names)), names
    return dict(fields)


def test_event_ids_are_unique_128_bit_hex() -> None:
    ids = [event.message_id for event in Event]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    # The ids are part of the interface (catalog, users' journalctl filters): never change them.
    assert Event.IMAGE_CACHED.message_id == "ead76b8fa24e4d86a4af5980ac5d0fb5"


def test_log_event_native_protocol(journal: tuple[Path, socket.socket],
                                   logger: logging.Logger) -> None:
    path, sock = journal
    setup_logging("debug", target="journal", journal_socket=path)
    image = "ab" * 20
    log_event(logger, Event.IMAGE_CACHED, "cached %s as %s", "/vmlinuz-6.1", image, path=Path("/vmlinuz-6.1"), image_id=image, state="CACHED")  # noqa: E501
    call_line = sys._getframe().f_lineno - 1
    entry = receive(sock)
    assert entry["MESSAGE"] == b"cached /vmlinuz-6.1 as " + b"ab" * 20
    assert entry["MESSAGE_ID"] == b"ead76b8fa24e4d86a4af5980ac5d0fb5"
    assert entry["PRIORITY"] == b"6"
    assert entry["SYSLOG_IDENTIFIER"] == b"bootwatch"
    assert entry["BOOTWATCH_EVENT"] == b"IMAGE_CACHED"
    assert entry["BOOTWATCH_PATH"] == b"/vmlinuz-6.1"
    assert entry["BOOTWATCH_IMAGE_ID"] == b"ab" * 20
    assert entry["BOOTWATCH_STATE"] == b"CACHED"
    # CODE_* name the caller of log_event, not journal.py.
    assert entry["CODE_FILE"] == __file__.encode()
    assert int(entry["CODE_LINE"]) == call_line
    assert entry["CODE_FUNC"] == b"test_log_event_native_protocol"


def test_fields_only_where_given(journal: tuple[Path, socket.socket],
                                 logger: logging.Logger) -> None:
    path, sock = journal
    setup_logging("info", target="journal", journal_socket=path)
    log_event(logger, Event.RESCAN_OVERFLOW, "rescanning", level=logging.WARNING, events=17)
    entry = receive(sock)
    assert entry["MESSAGE_ID"] == Event.RESCAN_OVERFLOW.message_id.encode()
    assert entry["PRIORITY"] == b"4"
    assert entry["BOOTWATCH_EVENTS"] == b"17"
    assert not {"BOOTWATCH_PATH", "BOOTWATCH_IMAGE_ID", "BOOTWATCH_STATE"} & set(entry)

    logger.info("plain message")
    entry = receive(sock)
    assert entry["MESSAGE"] == b"plain message"
    assert "MESSAGE_ID" not in entry


def test_levels_and_priorities(journal: tuple[Path, socket.socket],
                               logger: logging.Logger) -> None:
    path, sock = journal
    setup_logging("notice", target="journal", journal_socket=path)
    logger.info("dropped: below notice")
    logger.log(NOTICE, "notice")
    logger.error("error")
    logger.critical("critical")
    assert logging.getLevelName(NOTICE) == "NOTICE"
    got = [receive(sock) for _ in range(3)]
    assert [(e["MESSAGE"], e["PRIORITY"]) for e in got] == \
        [(b"notice", b"5"), (b"error", b"3"), (b"critical", b"2")]


def test_traceback_uses_binary_field(journal: tuple[Path, socket.socket],
                                     logger: logging.Logger) -> None:
    path, sock = journal
    setup_logging("info", target="journal", journal_socket=path)
    try:
        raise RuntimeError("job exploded")
    except RuntimeError:
        log_event(logger, Event.JOB_FAILED, "job %s failed", "gc", level=logging.ERROR,
                  exc_info=True, job="gc")
    data = sock.recv(MAX_DATAGRAM)
    # The MESSAGE field holds newlines: it must be in the length-prefixed binary form.
    assert b"\nMESSAGE\n" in b"\n" + data
    entry = dict(parse_entry(data))
    message = entry["MESSAGE"].decode()
    assert message.startswith("job gc failed\nTraceback (most recent call last):\n")
    assert message.endswith("RuntimeError: job exploded")
    assert entry["BOOTWATCH_JOB"] == b"gc"
    assert entry["MESSAGE_ID"] == Event.JOB_FAILED.message_id.encode()


def test_field_value_with_newline_and_utf8(journal: tuple[Path, socket.socket],
                                           logger: logging.Logger) -> None:
    path, sock = journal
    setup_logging("info", target="journal", journal_socket=path)
    log_event(logger, Event.IMAGE_MISSING, "missing", path="/bööt/odd\nname")
    entry = receive(sock)
    assert entry["BOOTWATCH_PATH"] == "/bööt/odd\nname".encode()


def test_big_message_goes_through_sealed_memfd(journal: tuple[Path, socket.socket],
                                               logger: logging.Logger) -> None:
    path, sock = journal
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    handler = setup_logging("info", target="journal", journal_socket=path)
    assert isinstance(handler, JournalHandler)
    # Larger than any AF_UNIX datagram the default send buffer allows: EMSGSIZE.
    big = "x" * (4 << 20)
    log_event(logger, Event.VERIFY_FAILED, "%s", big, level=logging.ERROR)
    entry = receive(sock, via_memfd=True)
    assert entry["MESSAGE"] == big.encode()
    assert entry["MESSAGE_ID"] == Event.VERIFY_FAILED.message_id.encode()


def test_journal_gone_falls_back_to_stderr(tmp_path: Path, logger: logging.Logger) -> None:
    stream = io.StringIO()
    handler = JournalHandler(tmp_path / "no-such-socket", fallback=stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log_event(logger, Event.DAEMON_STARTED, "started")
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(logging.NOTSET)
    assert re.fullmatch(r"bootwatch\[\d+\]: INFO started \(event=DAEMON_STARTED\)\n",
                        stream.getvalue())


def test_invalid_field_name_is_refused(logger: logging.Logger) -> None:
    with pytest.raises(ValueError, match="journal field"):
        log_event(logger, Event.IMAGE_CACHED, "x", level=logging.CRITICAL, **{"bad-name": 1})


# --- stderr -----------------------------------------------------------------------------------

def test_stderr_format(logger: logging.Logger) -> None:
    stream = io.StringIO()
    handler = setup_logging("info", target="stderr", stream=stream)
    assert isinstance(handler, StderrHandler)
    log_event(logger, Event.IMAGE_RESTORED, "restored %s", "/vmlinuz-6.1",
              path="/vmlinuz-6.1", image_id="cd" * 20, state="RESTORED")
    log_event(logger, Event.IMAGE_MISSING, "missing", level=logging.WARNING,
              path="/with space")
    logger.debug("not shown at info")
    try:
        raise ValueError("bad")
    except ValueError:
        logger.exception("with traceback")
    lines = stream.getvalue().splitlines()
    pid = os.getpid()
    assert lines[0] == (f"bootwatch[{pid}]: INFO restored /vmlinuz-6.1 (event=IMAGE_RESTORED "
                        f"path=/vmlinuz-6.1 image_id={'cd' * 20} state=RESTORED)")
    assert lines[1] == (f'bootwatch[{pid}]: WARNING missing (event=IMAGE_MISSING '
                        f'path="/with space")')
    assert lines[2] == f"bootwatch[{pid}]: ERROR with traceback"
    assert lines[3] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad"


def test_setup_logging_replaces_its_handler(logger: logging.Logger) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", target="stderr", stream=first)
    setup_logging("info", target="stderr", stream=second)
    logger.info("once")
    assert first.getvalue() == ""
    assert second.getvalue().endswith("INFO once\n")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_bootwatch", False)]
    assert len(ours) == 1


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("loud", target="stderr", stream=io.StringIO())


# --- choosing the target ----------------------------------------------------------------------

def test_journal_stream_detection(tmp_path: Path, journal: tuple[Path, socket.socket]) -> None:
    path, _sock = journal
    with open(tmp_path / "stderr.txt", "w") as stream:
        st = os.fstat(stream.fileno())
        matching = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stream_is_journal(stream, matching)
        assert not stream_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not stream_is_journal(stream, {"JOURNAL_STREAM": "garbage"})
        assert not stream_is_journal(stream, {})
        assert choose_target(stream, matching, path) == "journal"
        # stderr redirected elsewhere (JOURNAL_STREAM inherited but stale): keep stderr.
        assert choose_target(stream, {"JOURNAL_STREAM": "1:2"}, path) == "stderr"
        # A file somebody reads, and the socket exists: still stderr.
        assert choose_target(stream, {}, path) == "stderr"
        # No journal socket: stderr whatever the stream.
        assert choose_target(stream, matching, tmp_path / "none") == "stderr"
    with open(os.devnull, "w") as null:
        # Output to /dev/null would be lost: use the journal if it is there.
        assert choose_target(null, {}, path) == "journal"
        assert choose_target(null, {}, tmp_path / "none") == "stderr"
    assert choose_target(io.StringIO(), {}, path) == "stderr"


def test_auto_target_in_a_child_process(tmp_path: Path,
                                        journal: tuple[Path, socket.socket]) -> None:
    """A real process whose stderr is the 'journal stream' sends native entries."""
    path, sock = journal
    stderr_file = tmp_path / "stderr.txt"
    code = (
        "import logging, os, sys\n"
        "st = os.fstat(2)\n"
        "os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
        "from bootwatch.log import Event, log_event, setup_logging\n"
        f"setup_logging('info', journal_socket={str(path)!r})\n"
        "log_event(logging.getLogger('bootwatch.child'), Event.DAEMON_STARTED, 'hello')\n"
    )
    with open(stderr_file, "w") as err:
        subprocess.run([sys.executable, "-c", code], stderr=err, check=True, timeout=60,
                       cwd=Path(__file__).resolve().parent.parent)
    entry = receive(sock)
    assert entry["MESSAGE"] == b"hello"
    assert entry["MESSAGE_ID"] == Event.DAEMON_STARTED.message_id.encode()
    assert stderr_file.read_text() == ""
