"""Checks of the host before touching the kernel, each with an error that says what to do."""

from __future__ import annotations

import os
import socket

from ebpflb.errors import EbpflbError

LOOPBACK_IFINDEX = 1


def require_root() -> None:
    if os.geteuid() != 0:
        raise EbpflbError("ebpflb needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo")


def require_bpffs(pin_path: str) -> None:
    """The pin directory must be on a mounted bpffs, or pins would silently not persist."""
    parent = os.path.dirname(os.path.normpath(pin_path)) or "/"
    if not _is_bpffs(parent) and not _is_bpffs(pin_path):
        if _private_mounts() and _is_bpffs_for_init(parent):
            raise EbpflbError(PRIVATE_MOUNTS_HINT.format(what=f"{parent} has no bpffs here"))
        raise EbpflbError(
            f"{parent} is not a mounted BPF filesystem: run `mount -t bpf bpf /sys/fs/bpf` "
            "or choose --pin-path under a bpffs mount"
        )


PRIVATE_MOUNTS_HINT = (
    "this command runs in a mount namespace of its own, as under `ip netns exec`, and {what}: "
    "run it with `nsenter --net=/run/netns/NAME ebpflb ...` instead, which keeps the host's /sys"
)


def require_lasting_bpffs(pin_path: str) -> None:
    """Refuses pins that would vanish with this command: a bpffs mounted only in a mount
    namespace of its own (`ip netns exec` remounts /sys), not the one the host sees."""
    require_bpffs(pin_path)
    if not _private_mounts():
        return
    parent = os.path.dirname(os.path.normpath(pin_path)) or "/"
    try:
        here = os.stat(parent).st_dev
        host = os.stat(f"{_init_root()}/root{os.path.realpath(parent)}").st_dev
    except OSError:
        host = None
    if here != host:
        raise EbpflbError(PRIVATE_MOUNTS_HINT.format(what=f"the bpffs at {parent} would vanish when it exits"))


def _init_ns(kind: str) -> int:
    """Inode of the initial namespace of a kind ("net", "mnt"): init's, or where init is not
    readable (some sandboxes), kthreadd's, which kernel threads share; 0 if neither is."""
    for pid in (1, 2):
        try:
            return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
        except OSError:
            continue
    return 0


def _init_root() -> str:
    for pid in (1, 2):
        if os.access(f"/proc/{pid}/root", os.R_OK):
            return f"/proc/{pid}"
    return ""


def _private_mounts() -> bool:
    """Whether this thread's mount namespace differs from the initial one (False if unknown)."""
    init = _init_ns("mnt")
    return bool(init) and os.stat("/proc/thread-self/ns/mnt").st_ino != init


def _is_bpffs_for_init(path: str) -> bool:
    init = _init_root()
    try:
        return bool(init) and _is_bpffs(path, f"{init}/mountinfo")
    except OSError:
        return False


def current_netns() -> int:
    """Inode of this thread's network namespace (threads can be in different ones)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def initial_netns() -> int:
    """Inode of the initial network namespace; 0 if it cannot be read."""
    return _init_ns("net")


def _is_bpffs(path: str, mountinfo: str = "/proc/thread-self/mountinfo") -> bool:
    """The filesystem of the deepest mount point holding path, from a mountinfo file."""
    best, fstype = "", ""
    real = os.path.realpath(path)
    with open(mountinfo) as mounts:
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
