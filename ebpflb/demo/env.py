"""What the demo sets up on the host and must take down again: bpffs, a private network
namespace (entered by this thread only, without remounting /sys), and stale leftovers of a
demo that was killed before it could clean up."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from typing import Iterator

from ebpflb.netns import entered as netns_entered
from ebpflb.netns import pid_alive

BPFFS = "/sys/fs/bpf"
NAME_PREFIX = "ebpflb-demo-"


class DemoSetupError(Exception):
    """The machine cannot run the demo; the message says why and what to do."""


def run(*cmd: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise DemoSetupError(f"{cmd[0]} is not installed (make deps installs it)") from None
    if done.returncode != 0:
        raise DemoSetupError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()}")
    return done.stdout


def require_root() -> None:
    if os.geteuid() != 0:
        raise DemoSetupError("the demo loads XDP and creates a network namespace: run it as root (sudo make demo)")


def is_mounted(path: str) -> bool:
    return subprocess.run(["mountpoint", "-q", path]).returncode == 0


def mount_bpffs() -> bool:
    """Mounts bpffs at /sys/fs/bpf if nothing is mounted there; True if this call mounted it."""
    if is_mounted(BPFFS):
        return False
    run("mount", "-t", "bpf", "bpf", BPFFS)
    return True


def unmount_bpffs_if_empty() -> bool:
    """Undoes mount_bpffs unless someone else pinned something meanwhile."""
    leftovers = [n for n in os.listdir(BPFFS) if n not in ("maps.debug", "progs.debug")]
    if leftovers:
        return False
    return subprocess.run(["umount", BPFFS], capture_output=True).returncode == 0



class Namespace:
    """A named network namespace with lo up, like `ip netns add NAME`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"
        run("ip", "netns", "add", name)
        try:
            run("ip", "-n", name, "link", "set", "lo", "up")
        except DemoSetupError:
            self.delete()
            raise

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Moves this thread (and the threads and processes it starts) into the namespace."""
        with netns_entered(self.path):
            yield

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def exists(self) -> bool:
        return os.path.exists(self.path)



def remove_stale_leftovers() -> list[str]:
    """Deletes namespaces and pin directories of earlier demos whose process is gone (kill -9)."""
    removed = []
    pattern = re.compile(re.escape(NAME_PREFIX) + r"(\d+)$")
    names = [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]
    for name in names:
        match = pattern.match(name)
        if match and not pid_alive(int(match.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(f"namespace {name}")
    if os.path.isdir(BPFFS):
        for name in os.listdir(BPFFS):
            match = pattern.match(name)
            if match and not pid_alive(int(match.group(1))):
                # its XDP program went away with its namespace; only the pins are left
                shutil.rmtree(os.path.join(BPFFS, name), ignore_errors=True)
                removed.append(f"pins {BPFFS}/{name}")
    return removed
