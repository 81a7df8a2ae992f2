"""Structured logging: journald's native protocol under systemd, readable lines elsewhere.

**Where logs go.** :func:`setup_logging` picks one of two handlers:

* :class:`JournalHandler` when stderr *is* the journal: systemd connects a service's stderr to a
  journald stream socket and sets ``JOURNAL_STREAM=<st_dev>:<st_ino>`` of that socket. When the
  ``fstat()`` of our stderr matches, nobody but the journal reads it, so the records can go over
  the native protocol instead, with their fields. It is also used when there is no
  ``JOURNAL_STREAM`` but the journal socket exists and stderr is closed or ``/dev/null``, so the
  records would be lost otherwise.
* :class:`StderrHandler` in every other case, also when the journal socket exists: a terminal, a
  pipe that a test reads, a file. Output that somebody is reading is never diverted.

Third-party loggers (apscheduler, watchdog) reach the same handler with their warnings, because
it is installed on the root logger; the ``bootwatch`` logger gets the configured level.

**The native protocol** (systemd's ``sd_journal_sendv()``, described in "Native Journal Protocol"
on systemd.io): one ``AF_UNIX``/``SOCK_DGRAM`` datagram per record to
``/run/systemd/journal/socket``, made of fields ``NAME=value\\n``. A value that contains a newline
(a traceback) is sent as ``NAME\\n``, its length as a little-endian 64-bit integer, the bytes and
``\\n``. A datagram larger than the socket's send buffer fails with ``EMSGSIZE``; then the record
is written into a ``memfd``, sealed against any change, and the descriptor is passed in an empty
datagram with ``SCM_RIGHTS``, which journald reads. If even that fails (or journald is gone), the
record is written as a text line to stderr, which under systemd still reaches the journal, only
without its fields.

**Events.** Each kind of thing that bootwatch reports has an :class:`Event` with a fixed 128-bit
``MESSAGE_ID``, explained for ``journalctl -x`` in ``contrib/systemd/bootwatch.catalog``.
:func:`log_event` logs one with the fields ``BOOTWATCH_EVENT``, ``BOOTWATCH_PATH``,
``BOOTWATCH_IMAGE_ID`` and ``BOOTWATCH_STATE``, and the further ones of :class:`EventFields`.
"""

from __future__ import annotations

import array
import enum
import errno
import fcntl
import logging
import os
import re
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypedDict

from bootwatch.atomic import write_all
from bootwatch.errors import printable

if TYPE_CHECKING:
    from typing_extensions import Unpack

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
IDENTIFIER = "bootwatch"

NOTICE = 25
"""syslog's "normal but significant condition", between INFO and WARNING."""

# Registering a level name is idempotent; it must happen before anyone logs at NOTICE.
logging.addLevelName(NOTICE, "NOTICE")

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": NOTICE,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# A record attribute (set through ``extra=``) holding journal fields: {"NAME": "value"}.
FIELDS_ATTR = "journal_fields"

# Journal field names: upper-case letters, digits and underscores, not starting with a digit or
# an underscore (those are trusted fields that journald sets itself), at most 64 characters.
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")

# How long a send to journald may block before the record goes to stderr instead. journald
# applies back-pressure when it is slow; a daemon under a watchdog must not hang in a log call.
SEND_TIMEOUT = 5.0


class Event(enum.Enum):
    """The kinds of events bootwatch logs, each with its journal ``MESSAGE_ID``."""

    IMAGE_CACHED = "ead76b8fa24e4d86a4af5980ac5d0fb5"
    IMAGE_CHANGED = "22aab25a390d421882893f6ba5ff5a40"
    IMAGE_MISSING = "301189c12d464187beeaed44e38d0eda"
    IMAGE_RESTORED = "3d725dfb0f4c4dd4975387e9254cb07d"
    IMAGE_BROKEN = "1edb7ed204064f8487e306ec049553e9"
    VERIFY_FAILED = "f424900f9d294edcbc4c28b8f7e27a77"
    RESCAN_OVERFLOW = "91c440505c3646efa953712003a44d8c"
    CONFIG_RELOADED = "b27dd7de6818416fa8f9c385dec1e792"
    JOB_FAILED = "d3e1ddb1a57e4487bfc12070dca08f52"
    DAEMON_STARTED = "1512ba4a5a3247bdb7015989199f5e97"
    DAEMON_STOPPING = "250b565ce7d940968d734a52a73e818f"
    LOCK_WAIT = "ff4eaa8e4f7c4b7a92e3c2d356e8f4a8"
    RESTORE_ATTRIBUTES_REFUSED = "a4e2491ec5c94a068d393b35c7612ec6"
    RESTORED_COPY_REPLACED = "adbdff2755294c888363b35c43575b57"
    REFERENCES_UNKNOWN = "77444c18f4d74eada6cc7f88f521b56b"
    IO_ERROR = "2a432126ff454735a5279bc660a002f0"
    CACHE_DIRECTORY_REPLACED = "445eb8a338a94c5896bbb3ff819258f5"
    TRANSACTION_TIMEOUT = "cd98da52b4b341d791adc707fa625f62"
    NO_BOOT_ENTRIES = "c94114af4a854b428e3f05de560ee34a"
    ENTRY_BROKEN = "5964d3eca0164f52b61b152b3d0fbe1a"
    ENTRY_AT_RISK = "f485a98c00c245ffb28ef2fe94703389"
    ENTRY_RECOVERED = "6bee60758ca04e5b855144a33f2550f1"
    RESTORE_REFUSED = "c5266cdb333b49a2930b786f31b67314"
    PROOF_FAILED = "512a20ca6cfc491796fd2e743f11d732"
    IMAGE_WRITTEN_BROKEN = "1ee078c911bb4f17ae53037384550c0b"

    @property
    def message_id(self) -> str:
        return self.value


def syslog_priority(levelno: int) -> int:
    """A Python log level as a syslog priority (0 emerg ... 7 debug), for ``PRIORITY=``."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= NOTICE:
        return 5
    if levelno >= logging.INFO:
        return 6
    return 7


def parse_level(level: str | int) -> int:
    """``"notice"`` -> 25. Accepts the config's names in any case, or a number."""
    if isinstance(level, int):
        return level
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; expected one of "
                         + ", ".join(LEVELS)) from None


# --------------------------------------------------------------------------------------------
# The native protocol


def encode_field(name: str, value: str | bytes) -> bytes:
    """One field in the native protocol's text or, for values with a newline, binary form."""
    data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    key = name.encode("ascii")
    if b"\n" in data:
        return key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key + b"=" + data + b"\n"


def encode_entry(fields: Iterable[tuple[str, str | bytes]]) -> bytes:
    return b"".join(encode_field(name, value) for name, value in fields)


def _memfd_with(data: bytes) -> int:
    """A sealed memfd holding ``data``: journald refuses descriptors that could still change."""
    fd = os.memfd_create("bootwatch-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        write_all(fd, data)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
                    | fcntl.F_SEAL_SEAL)
        # The receiver shares our file offset; journald maps the file, but a plain read() should
        # find the data too.
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


class JournalHandler(logging.Handler):
    """Sends each record as one journal entry over the native protocol."""

    def __init__(self, socket_path: str | Path = JOURNAL_SOCKET, *,
                 identifier: str = IDENTIFIER, fallback: TextIO | None = None,
                 level: int = logging.NOTSET, fields: Mapping[str, str] | None = None,
                 fall_back: bool = True) -> None:
        super().__init__(level)
        self.socket_path = str(socket_path)
        self.identifier = identifier
        self.extra_fields = dict(fields or {})  # added to every record, e.g. BOOTWATCH_COMMAND
        # Where a record goes when journald cannot take it; None when stderr has its own handler.
        self._fallback: StderrHandler | None = StderrHandler(fallback) if fall_back else None
        self.setFormatter(MessageFormatter())
        # Not connected: a journald restart replaces the socket, and sendto() finds the new one.
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.settimeout(SEND_TIMEOUT)

    def fields(self, record: logging.LogRecord) -> list[tuple[str, str]]:
        """The journal fields of ``record``, MESSAGE first."""
        fields = [
            ("MESSAGE", self.format(record)),  # message, then traceback and stack, if any
            ("PRIORITY", str(syslog_priority(record.levelno))),
            ("SYSLOG_IDENTIFIER", self.identifier),
            ("SYSLOG_FACILITY", "3"),  # LOG_DAEMON
            ("CODE_FILE", record.pathname),
            ("CODE_LINE", str(record.lineno)),
            ("CODE_FUNC", record.funcName),
            ("LOGGER", record.name),
            ("THREAD_NAME", record.threadName or ""),
        ]
        for name, value in {**self.extra_fields, **getattr(record, FIELDS_ATTR, {})}.items():
            if _FIELD_NAME.fullmatch(name) and value is not None:
                fields.append((name, str(value)))
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = encode_entry(self.fields(record))
        except Exception:
            self.handleError(record)
            return
        try:
            self._send(data)
        except OSError:
            # journald is gone or too slow: the line on stderr is better than nothing.
            if self._fallback is not None:
                self._fallback.handle(record)

    def _send(self, data: bytes) -> None:
        try:
            self._socket.sendto(data, self.socket_path)
            return
        except OSError as err:
            # EMSGSIZE: larger than the send buffer. ENOBUFS: the kernel could not allocate it.
            if err.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
        fd = _memfd_with(data)
        try:
            self._socket.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       array.array("i", [fd]))], 0, self.socket_path)
        finally:
            os.close(fd)

    def close(self) -> None:
        try:
            self._socket.close()
            if self._fallback is not None:
                self._fallback.close()
        finally:
            super().close()


# --------------------------------------------------------------------------------------------
# Text lines on stderr


def _quote(value: str) -> str:
    if value and not any(c.isspace() or c in "\"'\\=" for c in value):
        return printable(value)
    return '"' + printable(value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")) + '"'


class MessageFormatter(logging.Formatter):
    """The message with its control characters escaped (see errors.printable), then the traceback."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


class TextFormatter(logging.Formatter):
    """``bootwatch[PID]: LEVEL message (event=IMAGE_CACHED path=/vmlinuz-6.1 ...)``.

    The fields are the record's journal fields without ``MESSAGE_ID``, lower-cased and without
    the ``BOOTWATCH_`` prefix. A traceback follows on the next lines.
    """

    def __init__(self, identifier: str = IDENTIFIER) -> None:
        super().__init__()
        self.identifier = identifier

    def format(self, record: logging.LogRecord) -> str:
        # The message may carry file names: escaped, so that it stays one line and moves no cursor.
        line = f"{self.identifier}[{record.process}]: {record.levelname} {printable(record.getMessage())}"
        pairs = []
        for name, value in getattr(record, FIELDS_ATTR, {}).items():
            if name == "MESSAGE_ID" or value is None:
                continue
            short = name[len("BOOTWATCH_"):] if name.startswith("BOOTWATCH_") else name
            pairs.append(f"{short.lower()}={_quote(str(value))}")
        if pairs:
            line += " (" + " ".join(pairs) + ")"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Readable lines on a text stream, stderr unless told otherwise (looked up at each write,
    so that a test's or a daemon's later replacement of ``sys.stderr`` is honoured)."""

    def __init__(self, stream: TextIO | None = None, *,
                 identifier: str = IDENTIFIER) -> None:
        super().__init__(stream)
        self._explicit_stream = stream
        self.setFormatter(TextFormatter(identifier))

    def emit(self, record: logging.LogRecord) -> None:
        if self._explicit_stream is None:
            self.stream = sys.stderr
        super().emit(record)


# --------------------------------------------------------------------------------------------
# Choosing and installing the handler


def _fstat(stream: Any) -> os.stat_result | None:
    try:
        return os.fstat(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return None  # no descriptor (StringIO), or closed


def stream_is_journal(stream: Any, environ: Mapping[str, str]) -> bool:
    """Whether ``stream`` is the journald stream that systemd named in ``$JOURNAL_STREAM``."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    st = _fstat(stream)
    if st is None or not device.isdigit() or not inode.isdigit():
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def _stream_is_lost(stream: Any) -> bool:
    """Closed, or /dev/null: whatever is written there is read by nobody."""
    if stream is None or getattr(stream, "closed", False):
        return True
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        return False  # an in-memory stream: somebody reads it
    try:
        st = os.fstat(fd)
    except OSError:
        return True
    try:
        null = os.stat("/dev/null")
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev


def choose_target(stream: Any, environ: Mapping[str, str],
                  socket_path: str | Path = JOURNAL_SOCKET) -> str:
    """``"journal"`` or ``"stderr"``; see the module docstring for the rules."""
    if not Path(socket_path).exists():
        return "stderr"
    if stream_is_journal(stream, environ):
        return "journal"
    if "JOURNAL_STREAM" not in environ and _stream_is_lost(stream):
        return "journal"
    return "stderr"


def setup_logging(level: str | int, *, stream: TextIO | None = None,
                  target: str = "auto", environ: Mapping[str, str] | None = None,
                  journal_socket: str | Path = JOURNAL_SOCKET,
                  loggers: tuple[str, ...] = (IDENTIFIER,)) -> logging.Handler:
    """Send the ``bootwatch`` logger's records, at ``level`` and above, to the journal or stderr.

    ``target`` is ``"auto"``, ``"journal"`` or ``"stderr"``. Calling it again (on reload)
    replaces the handler it installed before. Returns the installed handler.
    """
    levelno = parse_level(level)
    environ = os.environ if environ is None else environ
    if target == "auto":
        target = choose_target(stream if stream is not None else sys.stderr, environ,
                               journal_socket)
    handler: logging.Handler
    if target == "journal":
        handler = JournalHandler(journal_socket, fallback=stream)
    elif target == "stderr":
        handler = StderrHandler(stream)
    else:
        raise ValueError(f"unknown log target {target!r}; expected auto, journal or stderr")
    _install([handler], levelno, loggers)
    return handler


def _install(handlers: list[logging.Handler], levelno: int, loggers: tuple[str, ...]) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_bootwatch", False):
            root.removeHandler(old)
            old.close()
    # On the root logger, so that the warnings of apscheduler and watchdog arrive here too;
    # the root's own level (WARNING by default) keeps their chatter out.
    for handler in handlers:
        handler._bootwatch = True  # type: ignore[attr-defined]  # ours, to replace on the next call
        root.addHandler(handler)
    for name in loggers:
        logging.getLogger(name).setLevel(levelno)


def setup_cli_logging(level: str | int, command: str, *, plain: bool = False,
                      stream: TextIO | None = None, environ: Mapping[str, str] | None = None,
                      journal_socket: str | Path = JOURNAL_SOCKET,
                      loggers: tuple[str, ...] = (IDENTIFIER,)) -> list[logging.Handler]:
    """Logging for a command that changes the boot directory or the cache (``scan``, ``restore``...).

    stderr gets what it got before: the records at ``level`` and above, as readable lines, or with
    ``plain`` as the bare message (what Python prints of a warning when logging is not set up).
    Wherever the journal is there (its socket exists), every record at INFO and above goes to it
    too, with ``BOOTWATCH_COMMAND=<command>``: a restore done by ``scan`` (the kernel-install
    plugin) is found by the same ``journalctl MESSAGE_ID=...`` as the daemon's. When stderr is
    itself the journal (a command run by a unit), the native records replace the lines.
    Returns the installed handlers.
    """
    levelno = parse_level(level)
    environ = os.environ if environ is None else environ
    journal = Path(journal_socket).exists()
    handlers: list[logging.Handler] = []
    if not (journal and stream_is_journal(stream if stream is not None else sys.stderr, environ)):
        lines = StderrHandler(stream)
        if plain:
            lines.setFormatter(logging.Formatter("%(message)s"))
        lines.setLevel(levelno)
        handlers.append(lines)
    if journal:
        handlers.append(JournalHandler(journal_socket, level=min(levelno, logging.INFO), fall_back=False,
                                       fields={"BOOTWATCH_COMMAND": command}))
    _install(handlers, min(levelno, logging.INFO) if journal else levelno, loggers)
    return handlers


# --------------------------------------------------------------------------------------------
# Events


class EventFields(TypedDict, total=False):
    """The further fields an event may carry, each logged as ``BOOTWATCH_<NAME>`` (upper-cased).

    Passed to :func:`log_event` as keywords, so a misspelt name is a type error; a value of None
    leaves the field out. Users filter the journal by these names: never rename one.
    """

    reason: str  # RESCAN_OVERFLOW: "overflow" or "watch-lost"; REFERENCES_UNKNOWN, NO_BOOT_ENTRIES, PROOF_FAILED: why;
    # IMAGE_WRITTEN_BROKEN: what its check found
    previous_image_id: str | None  # IMAGE_CHANGED; IMAGE_WRITTEN_BROKEN: the previous good image
    references: int  # IMAGE_MISSING, RESTORE_REFUSED: how many boot entries name the path
    job: str  # JOB_FAILED
    waited: str  # LOCK_WAIT, TRANSACTION_TIMEOUT: seconds
    holder_pid: int | None  # LOCK_WAIT, TRANSACTION_TIMEOUT
    holder_command: str | None  # LOCK_WAIT, TRANSACTION_TIMEOUT
    errno: str  # IO_ERROR: the errno's name, e.g. ENOSPC
    recorded_mode: str  # RESTORE_ATTRIBUTES_REFUSED: octal
    recorded_uid: int  # RESTORE_ATTRIBUTES_REFUSED
    recorded_gid: int  # RESTORE_ATTRIBUTES_REFUSED
    entry: str  # ENTRY_*, PROOF_FAILED: the boot entry as SOURCE:ID ("bls:fedora-6.1.conf")
    title: str  # ENTRY_*: the entry's title
    findings: str  # ENTRY_*: why it is in its state, one finding per line
    previous_state: str  # ENTRY_RECOVERED: the state it was reported in (BROKEN, AT_RISK)
    restore_command: str | None  # IMAGE_WRITTEN_BROKEN: what puts the previous good image back


def event_fields(event: Event, *, path: str | os.PathLike[str] | None = None, image_id: str | None = None,
                 state: enum.Enum | None = None, **fields: Unpack[EventFields]) -> dict[str, str]:
    """The journal fields of an event. ``fields`` become ``BOOTWATCH_<NAME>`` (upper-cased;
    a name that already starts with ``BOOTWATCH_`` is kept as it is)."""
    result = {"MESSAGE_ID": event.message_id, "BOOTWATCH_EVENT": event.name}
    if path is not None:
        result["BOOTWATCH_PATH"] = str(path)
    if image_id is not None:
        result["BOOTWATCH_IMAGE_ID"] = str(image_id)
    if state is not None:
        # An enum member logs by its name (CACHED), anything else as its text.
        result["BOOTWATCH_STATE"] = state.name if isinstance(state, enum.Enum) else str(state)
    for name, value in fields.items():
        if value is None:
            continue
        key = name.upper()
        if not key.startswith("BOOTWATCH_"):
            key = "BOOTWATCH_" + key
        if not _FIELD_NAME.fullmatch(key):
            raise ValueError(f"{name!r} cannot be a journal field name")
        result[key] = value.name if isinstance(value, enum.Enum) else str(value)
    return result


def log_event(logger: logging.Logger, event: Event, message: str, *args: object,
              level: int = logging.INFO, path: str | os.PathLike[str] | None = None, image_id: str | None = None,
              state: enum.Enum | None = None, exc_info: Any = None, stack_info: bool = False,
              **fields: Unpack[EventFields]) -> None:
    """Log ``message % args`` as ``event``, with its ``MESSAGE_ID`` and ``BOOTWATCH_*`` fields.

    ``exc_info=True`` adds the current traceback to the message, as with ``logger.exception``.
    CODE_FILE/CODE_LINE name the caller of this function.
    """
    if not logger.isEnabledFor(level):
        return
    extra = {FIELDS_ATTR: event_fields(event, path=path, image_id=image_id, state=state,
                                       **fields)}
    logger.log(level, message, *args, exc_info=exc_info, stack_info=stack_info,
               stacklevel=2, extra=extra)


# --------------------------------------------------------------------------------------------
# Human text: what a log line or a table says, never a journal field or --json


SHORT_ID_DIGITS = 12
"""The digits of an image id that human text shows: what ``bootwatch list`` shows and
``restore --image`` takes. Journal fields (``BOOTWATCH_IMAGE_ID``) and --json keep it whole."""


def short_id(image_id: str | None) -> str:
    """An image id as human text shows it: its first :data:`SHORT_ID_DIGITS` digits ("none" for None)."""
    return "none" if image_id is None else image_id[:SHORT_ID_DIGITS]


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` with ``noun`` in its number: "1 boot entry", "2 boot entries", "0 images"
    (``plural``: the noun's plural when it is not the noun and an "s")."""
    if count == 1:
        return f"1 {noun}"
    return f"{count} {plural if plural is not None else noun + 's'}"


def boot_entries(count: int) -> str:
    """"1 boot entry", "3 boot entries"."""
    return counted(count, "boot entry", "boot entries")


# --------------------------------------------------------------------------------------------
# I/O errors, once per file and errno

# A failure of the same file with the same errno is logged again after this many seconds, with
# the number of repeats in between: a full disk fails every batch and every job.
IO_ERROR_REPEAT = 600.0


class IoErrorLog:
    """Logs each failing (file, errno) as one ``IO_ERROR`` line, again only after
    :data:`IO_ERROR_REPEAT` seconds (saying how often it failed meanwhile), and one line when the
    failures clear. Shared by the daemon's worker and job threads."""

    def __init__(self, logger: logging.Logger, repeat: float = IO_ERROR_REPEAT) -> None:
        self.logger = logger
        self.repeat = repeat
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int], list[float]] = {}  # key -> [last logged, repeats since]
        self.since: float | None = None  # time.monotonic() of the first failure not cleared yet

    def report(self, filename: str, err: int, message: str, *, hint: str | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            if self.since is None:
                self.since = now
            seen = self._seen.get((filename, err))
            if seen is not None and now - seen[0] < self.repeat:
                seen[1] += 1
                return
            repeats = int(seen[1]) if seen is not None else 0
            self._seen[(filename, err)] = [now, 0]
        name = errno.errorcode.get(err, str(err))
        log_event(self.logger, Event.IO_ERROR, "%s%s%s", message, f" (hint: {hint})" if hint else "",
                  f"; failed {counted(repeats, 'more time')} since it was last logged" if repeats else "",
                  level=logging.ERROR, path=filename, errno=name)

    def clear(self, what: str) -> None:
        """The failures are over (``what`` says how we know): say so once."""
        with self._lock:
            if self.since is None:
                return
            since, self.since = self.since, None
            failures = sum(1 + int(repeats) for _, repeats in self._seen.values())
            files = sorted({name for name, _ in self._seen})
            self._seen.clear()
        self.logger.log(NOTICE, "%s: the I/O errors of %s are over (%s in %.0f s)", what,
                        ", ".join(files), counted(failures, "failure"), time.monotonic() - since)
