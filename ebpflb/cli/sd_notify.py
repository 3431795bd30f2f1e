"""systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram to the socket
named by $NOTIFY_SOCKET, so a Type=notify unit is started only once the program is attached."""

from __future__ import annotations

import os
import socket


def sd_notify(state: str) -> bool:
    """Sends e.g. "READY=1"; False when not run by systemd (no $NOTIFY_SOCKET) or it is gone."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return False
    address = "\0" + path[1:] if path[0] == "@" else path  # '@': the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError:
        return False  # the manager went away: nothing to tell
    return True
