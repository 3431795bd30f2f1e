"""Network namespaces and the veth pair the benchmark runs in; nothing outside them is touched."""
from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

from ebpflb.netns import pid_alive

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
PREFIX = "ebpflb-bench-"
BPFFS = "/sys/fs/bpf"
SENDER_ADDR = "10.199.0.1"
RECEIVER_ADDR = "10.199.0.2"
PREFIX_LEN = 30
SENDER_VETH = "ebb-snd"
RECEIVER_VETH = "ebb-rcv"


def sh(*argv: str, check: bool = True, capture: bool = True) -> str:
    result = subprocess.run(list(argv), capture_output=capture, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout if capture else ""


def in_ns(ns: str, argv: list[str]) -> list[str]:
    # nsenter changes only the network namespace, so the host's /sys/fs/bpf stays visible.
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


def list_namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]



def _owner_pid(name: str) -> int | None:
    # Names look like ebpflb-bench-<pid>-<role>; the pid tells whether its run is still alive.
    parts = name[len(PREFIX):].split("-")
    return int(parts[0]) if parts and parts[0].isdigit() else None


def remove_stale() -> None:
    """Delete namespaces and bpffs pins left by an earlier run of this benchmark that died."""
    for ns in list_namespaces():
        pid = _owner_pid(ns) if ns.startswith(PREFIX) else None
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            print(f"[netns] removing stale namespace {ns}", flush=True)
            sh("ip", "netns", "del", ns, check=False)
    if os.path.isdir(BPFFS):
        for entry in os.listdir(BPFFS):
            pid = _owner_pid(entry) if entry.startswith(PREFIX) else None
            if pid is not None and pid != os.getpid() and not pid_alive(pid):
                print(f"[netns] removing stale pins {BPFFS}/{entry}", flush=True)
                sh("rm", "-rf", os.path.join(BPFFS, entry), check=False)


def ensure_bpffs() -> bool:
    """Mounts bpffs if the machine has none; True if this call mounted it (to unmount after)."""
    with open("/proc/mounts") as mounts:
        if any(line.split()[1] == BPFFS and line.split()[2] == "bpf" for line in mounts):
            return False
    sh("mount", "-t", "bpf", "bpf", BPFFS)
    return True


def create_namespace(name: str) -> None:
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")


def delete_namespace(name: str) -> None:
    if name in list_namespaces():
        sh("ip", "netns", "del", name)


@dataclass
class VethPair:
    """Sender namespace <-> receiver namespace, one /30, static neighbours (no ARP during runs)."""

    sender_ns: str
    receiver_ns: str

    def create(self) -> None:
        create_namespace(self.sender_ns)
        create_namespace(self.receiver_ns)
        sh("ip", "-n", self.sender_ns, "link", "add", SENDER_VETH, "type", "veth",
           "peer", "name", RECEIVER_VETH, "netns", self.receiver_ns)
        for ns, dev, addr in ((self.sender_ns, SENDER_VETH, SENDER_ADDR),
                              (self.receiver_ns, RECEIVER_VETH, RECEIVER_ADDR)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        # Full software checksums on the sender side: a wrong checksum rewrite then shows as
        # UDP InCsumErrors and as loss instead of passing unnoticed.
        sh(*in_ns(self.sender_ns, ["ethtool", "-K", SENDER_VETH, "tx", "off"]))
        for ns, dev, peer_ns, peer_dev, peer_addr in (
            (self.sender_ns, SENDER_VETH, self.receiver_ns, RECEIVER_VETH, RECEIVER_ADDR),
            (self.receiver_ns, RECEIVER_VETH, self.sender_ns, SENDER_VETH, SENDER_ADDR),
        ):
            mac = link_mac(peer_ns, peer_dev)
            sh("ip", "-n", ns, "neigh", "replace", peer_addr, "lladdr", mac,
               "dev", dev, "nud", "permanent")

    def delete(self) -> None:
        delete_namespace(self.sender_ns)
        delete_namespace(self.receiver_ns)


def link_mac(ns: str, dev: str) -> str:
    out = sh("ip", "-n", ns, "-o", "link", "show", dev)
    fields = out.split()
    return fields[fields.index("link/ether") + 1]


def enter_namespace(name: str) -> None:
    """Moves the calling thread (only it: setns(2) is per thread) into namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_namespace(name: str, fn: Callable[[], T]) -> T:
    """fn() in a thread of its own that entered namespace `name`; the thread ends with it, so
    nothing else ever runs there. Its exception, if any, is raised here."""
    outcome: dict[str, object] = {}

    def body() -> None:
        try:
            enter_namespace(name)
            outcome["value"] = fn()
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=body, name=f"in-{name}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
