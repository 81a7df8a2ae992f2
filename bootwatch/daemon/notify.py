"""sd_notify: tell systemd when the daemon is ready, reloading, stopping, alive and what it does.

systemd passes ``$NOTIFY_SOCKET``, an ``AF_UNIX`` datagram socket (a path, or ``@name`` in the
abstract namespace). Each datagram holds newline-separated ``KEY=value`` assignments, and systemd
applies the whole datagram at once; that is why ``RELOADING=1`` and ``MONOTONIC_USEC=`` go into
one send here: systemd 253+ pairs them to match the reload with the ``READY=1`` that ends it.

``sdnotify.SystemdNotifier`` does the sending (one ``send()`` on a connected datagram socket, so
one datagram per call) and swallows errors: a dead systemd must not kill the daemon. Without
``$NOTIFY_SOCKET`` every method does nothing.

With ``WatchdogSec=``, systemd sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, the process it
means); if no ``WATCHDOG=1`` arrives within that time it kills the service with SIGABRT. Pinging
at half the interval, as sd_watchdog_enabled(3) recommends, leaves room for one late ping.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import sdnotify

# Seconds a notification may wait for room in systemd's queue before it is dropped.
SEND_TIMEOUT = 1.0


class SystemdNotifier:
    """sd_notify messages for this process; a no-op when systemd did not ask for them."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self._environ = environ
        self._notifier: sdnotify.SystemdNotifier | None = None
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        if not address:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(address)
        except OSError:
            # As sd_notify() does without a listener: nothing to tell, and not an error.
            sock.close()
            return
        # systemd reads the socket as messages come; a PID 1 that stalls must not stall the daemon
        # with it (the kernel blocks a send while the receiver's queue is full): a message that
        # cannot be queued within the bound is dropped, as one to a dead systemd is.
        sock.settimeout(SEND_TIMEOUT)
        # sdnotify connects to os.environ's socket by itself; use our socket (from ``environ``)
        # through its public attribute instead, and keep its error-swallowing notify().
        notifier = sdnotify.SystemdNotifier()
        if notifier.socket is not None:
            notifier.socket.close()
        notifier.socket = sock
        self._notifier = notifier

    def notify(self, **assignments: object) -> None:
        """Send ``KEY=value`` assignments (``READY=1`` as ``ready=1``) in one datagram."""
        if self._notifier is None or not assignments:
            return
        lines = []
        for key, value in assignments.items():
            # A newline would start a new assignment: the value must stay on its line.
            text = " ".join(str(value).splitlines())
            lines.append(f"{key.upper()}={text}")
        # sdnotify encodes as latin-1 (and drops the message if that fails); handing it the UTF-8
        # bytes as latin-1 text makes it send UTF-8, as systemd expects, for any path name.
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
