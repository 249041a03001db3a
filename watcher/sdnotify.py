"""systemd's notify protocol: one datagram per message to ``$NOTIFY_SOCKET`` (sd_notify(3)).

A dozen lines do not justify a dependency. Outside systemd (no ``NOTIFY_SOCKET``) every call is a
no-op, so the daemon calls these unconditionally.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(message: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``READY=1``); True when a socket was there to take it."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` heartbeats: half of ``WatchdogSec``, or None when off."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.5, int(usec) / 2 / 1_000_000)
    except ValueError:
        return None
