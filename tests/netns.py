"""Network namespaces for tests: created per test, always removed, entered without
remounting /sys (nsenter / setns), so the host's bpffs pins stay visible."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Sequence

from ebpflb.netns import entered as netns_entered

REPO = Path(__file__).resolve().parent.parent
_counter = itertools.count()


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)



class NetNS:
    """A namespace with lo up. Sockets made inside `with ns.entered():` stay in it."""

    def __init__(self, tag: str = "t") -> None:
        self.name = f"ebpflb-{tag}-{os.getpid()}-{next(_counter)}"
        sh("ip", "netns", "add", self.name)
        self.path = f"/run/netns/{self.name}"
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.name, *args).stdout

    def run(self, *cmd: str, check: bool = False, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["nsenter", f"--net={self.path}", *cmd], capture_output=True, text=True, check=check, timeout=timeout, **kw
        )

    def ebpflb(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """The real CLI, as a user runs it, inside this namespace."""
        return self.run(sys.executable, "-m", "ebpflb", *args, timeout=timeout, cwd=str(REPO))

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["nsenter", f"--net={self.path}", *cmd], cwd=str(REPO), **kw)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Switches this thread into the namespace for the block, then back."""
        with netns_entered(self.path):
            yield

    def nstat(self, names: Sequence[str]) -> dict[str, int]:
        out = self.run("nstat", "-az", *names, check=True).stdout
        values = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in names:
                values[parts[0]] = int(parts[1])
        return values

    def delete(self) -> None:
        """Kills what still runs in it (a test's background servers), then removes it."""
        pids = sh("ip", "netns", "pids", self.name, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "del", self.name, check=False)
