"""Checks of the host before touching the kernel, each with an error that says what to do."""

from __future__ import annotations

import os
import socket

from .errors import EbpflbError

LOOPBACK_IFINDEX = 1


def require_root() -> None:
    if os.geteuid() != 0:
        raise EbpflbError("ebpflb needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo")


def require_bpffs(pin_path: str) -> None:
    """The pin directory must be on a mounted bpffs, or pins would silently not persist."""
    parent = os.path.dirname(os.path.normpath(pin_path)) or "/"
    if not _is_bpffs(parent) and not _is_bpffs(pin_path):
        raise EbpflbError(
            f"{parent} is not a mounted BPF filesystem: run `mount -t bpf bpf /sys/fs/bpf` "
            "or choose --pin-path under a bpffs mount"
        )


def _is_bpffs(path: str) -> bool:
    """The filesystem of the deepest mount point holding path, from /proc/self/mountinfo."""
    best, fstype = "", ""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            left, _, right = line.partition(" - ")
            mount_point = left.split()[4]
            if (real == mount_point or real.startswith(mount_point.rstrip("/") + "/")) and len(mount_point) >= len(
                best
            ):
                best, fstype = mount_point, right.split()[0]
    return fstype == "bpf"


def ifindex_of(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise EbpflbError(f"no network interface named {name!r} here: see `ip link` for the names") from None


def interfaces() -> list[tuple[int, str]]:
    return socket.if_nameindex()


def ifname_of(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"if{index}"
