"""Entering a network namespace from Python without remounting /sys (unlike `ip netns exec`),
so the host's bpffs pins stay visible. Used by the demo and the tests."""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(ns_path: str) -> Iterator[None]:
    """Moves this thread (and what it starts) into the namespace at ns_path for the block.
    Sockets made inside stay in that namespace afterwards."""
    with open("/proc/self/ns/net") as home, open(ns_path) as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


def pid_alive(pid: int) -> bool:
    """Whether the process that named a namespace after its pid still runs (stale-leftover checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
