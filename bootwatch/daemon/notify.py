"""sd_notify: tell systemd when the daemon is ready, reloading, stopping, alive and what it does.

systemd passes ``$NOTIFY_SOCKET``, an ``AF_UNIX`` datagram socket (a path, or ``@name`` in the
abstract namespace). Each datagram holds newline-separated ``KEY=value`` assignments, and systemd
applies the whole datagram at once; that is why ``RELOADING=1`` and ``MONOTONIC_USEC=`` go into
one send here: systemd 253+ pairs them to match the reload with the ``READY=1`` that ends it.

``sdnotify.SystemdNotifier`` connects to ``$NOTIFY_SOCKET`` of the process environment and does
the sending (one ``sendall()`` on its connected datagram socket: one datagram per call), and
swallows errors: a dead systemd must not kill the daemon. Without a socket every method does
nothing. Two things are added on its own objects, not around them:

- a send timeout (:data:`SEND_TIMEOUT`) on its socket: systemd reads the socket as messages
  come, but the kernel blocks a send while the receiver's queue is full, and a PID 1 that stalls
  must not stall the daemon with it. A message that cannot be queued within the bound is dropped
  (the timeout is an error that ``notify()`` swallows), as one to a dead systemd is;
- the text handed to ``notify()`` is the UTF-8 encoding of the message, as latin-1 text.
  sdnotify 0.3 encodes every message as latin-1, while systemd takes only UTF-8 (a ``STATUS=``
  that is not UTF-8 clean is ignored): a path with a character outside latin-1 would make
  sdnotify drop the whole message, and one with a latin-1 accent would reach systemd as invalid
  UTF-8. Latin-1 maps each of the 256 byte values to one character, so the bytes sent are
  exactly the UTF-8 ones.

With ``WatchdogSec=``, systemd sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, the process it
means); if no ``WATCHDOG=1`` arrives within that time it kills the service with SIGABRT. Pinging
at half the interval, as sd_watchdog_enabled(3) recommends, leaves room for one late ping.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import sdnotify

# Seconds a notification may wait for room in systemd's queue before it is dropped.
SEND_TIMEOUT = 1.0


class SystemdNotifier:
    """sd_notify messages for this process; a no-op when systemd did not ask for them.

    The notification socket is the process environment's (sdnotify reads ``$NOTIFY_SOCKET``
    itself); ``environ`` gives the watchdog settings (``$WATCHDOG_USEC``, ``$WATCHDOG_PID``),
    the process environment by default.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        notifier = sdnotify.SystemdNotifier()
        if notifier.socket is not None:
            notifier.socket.settimeout(SEND_TIMEOUT)
        self._notifier: sdnotify.SystemdNotifier | None = notifier if notifier.socket is not None else None

    def notify(self, **assignments: object) -> None:
        """Send ``KEY=value`` assignments (``READY=1`` as ``ready=1``) in one datagram."""
        if self._notifier is None or not assignments:
            return
        lines = []
        for key, value in assignments.items():
            # A newline would start a new assignment: the value must stay on its line.
            text = " ".join(str(value).splitlines())
            lines.append(f"{key.upper()}={text}")
        # UTF-8 on the wire, through sdnotify's latin-1 (see the module docstring).
        self._notifier.notify("\n".join(lines).encode("utf-8", "surrogateescape")
                              .decode("latin-1"))

    def ready(self, status: str | None = None) -> None:
        """Startup (or a reload) is complete: ``systemctl start`` returns now."""
        if status is None:
            self.notify(ready=1)
        else:
            self.notify(ready=1, status=status)

    def reloading(self, status: str | None = None) -> None:
        """A reload starts; :meth:`ready` ends it. ``MONOTONIC_USEC`` is CLOCK_MONOTONIC now."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        if status is None:
            self.notify(reloading=1, monotonic_usec=usec)
        else:
            self.notify(reloading=1, monotonic_usec=usec, status=status)

    def stopping(self, status: str | None = None) -> None:
        """Shutdown starts."""
        if status is None:
            self.notify(stopping=1)
        else:
            self.notify(stopping=1, status=status)

    def status(self, text: str) -> None:
        """A one-line summary that ``systemctl status`` shows."""
        self.notify(status=text)

    def watchdog(self) -> None:
        """I am alive: reset systemd's watchdog timer."""
        self.notify(watchdog=1)

    def watchdog_interval(self) -> float | None:
        """Seconds between :meth:`watchdog` pings (half of ``WatchdogSec=``), or None if the
        watchdog is off or meant for another process."""
        try:
            usec = int(self._environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        pid = self._environ.get("WATCHDOG_PID")
        if pid:
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                return None
        return usec / 2 / 1_000_000

    def close(self) -> None:
        if self._notifier is not None:
            self._notifier.socket.close()
            self._notifier = None

    def __enter__(self) -> SystemdNotifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
