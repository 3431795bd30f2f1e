"""The README's command examples, run for real so they cannot rot.

Every ```console block of README.md is a list of `$ command` lines, each followed by the output
it printed. This test runs the important ones in README order inside a fresh namespace (with a
veth named eth0, as on a real host) against the instance they load, with a pin path of its own
in place of /sys/fs/bpf/ebpflb, and compares each output with the README's after masking what
legitimately varies (numbers, column widths, the object's install path).

README_CAPTURE=FILE writes every command's real output to FILE, to refresh the README. The checks
of the text alone, which run nothing, are tests/unit/test_readme_text.py."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..netns import REPO, NetNS
from ..unit.test_readme_text import README, Example, console_examples

pytestmark = pytest.mark.kernel

DEFAULT_PIN = re.compile(r"/sys/fs/bpf/ebpflb(?![-\w])")
# commands this test runs; others (make, pip, mount, run, trace) are shown but not run here
RUN_PREFIXES = ("ebpflb load", "ebpflb status", "ebpflb gateways", "ebpflb weights", "ebpflb object-path",
                "ebpflb metrics", "ebpflb top", "ebpflb exporter", "curl ",
                "ebpflb unload", "python3 -c", "python3 examples/", "pkill ", "printf ", "xdp-loader ",
                "rm -r /sys/fs/bpf/", "rm /tmp/ebpflb-")
LIBXDP_DIR = "/sys/fs/bpf/xdp"
XDP_LOADER_LOCK = "/run/xdp-loader.lck"


def runnable(example: Example) -> bool:
    return example.command.startswith(RUN_PREFIXES)


def skeleton(lines: list[str]) -> list[str]:
    """What must not change: words and layout, not numbers, widths or install paths."""
    out = []
    for line in lines:
        line = re.sub(r"\S*/ebpflb/bpf/ebpflb\.bpf\.o", "OBJECT", line)
        line = re.sub(r"\d+(\.\d+)?", "N", line)
        line = re.sub(r"[━─]+", "-", line)
        line = " ".join(line.split())
        if line:
            out.append(line)
    return out


def adapt(command: str, pin_path: str) -> str:
    """The README command against this test's pin path."""
    command = DEFAULT_PIN.sub(pin_path, command)
    if command.startswith("ebpflb ") and "object-path" not in command and "--pin-path" not in command:
        # the option goes to ebpflb, before a pipe, a redirection or the next command
        end = min((i for i in (command.find(t) for t in (" |", " 2>", " >", ";")) if i >= 0), default=len(command))
        command = f"{command[:end]} --pin-path {pin_path}{command[end:]}"
    return command


@pytest.fixture
def host_like_netns(netns: NetNS) -> NetNS:
    netns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
    netns.ip("link", "set", "eth0", "up")
    netns.ip("link", "set", "eth0-peer", "up")
    return netns


def test_readme_commands_work_as_shown(host_like_netns: NetNS, pin_path: str) -> None:
    ns = host_like_netns
    for tool in ("xdp-loader", "socat"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make deps installs it)")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", COLUMNS="200")
    examples = [e for e in console_examples(README.read_text()) if runnable(e)]
    capture = os.environ.get("README_CAPTURE")
    captured: list[str] = []
    dispatcher_dir_existed = os.path.exists(LIBXDP_DIR)
    try:
        for example in examples:
            command = adapt(example.command, pin_path)
            done = ns.run("bash", "-c", command, env=env, cwd=str(REPO))
            actual = [DEFAULT_PIN.sub("/sys/fs/bpf/ebpflb", line.replace(pin_path, "/sys/fs/bpf/ebpflb"))
                      for line in done.stdout.rstrip("\n").splitlines()]
            captured += [f"$ {example.command}", *actual]
            assert done.returncode == 0, f"README.md:{example.line} `{command}` failed: {done.stderr.strip()}"
            assert skeleton(actual) == skeleton(example.expected), (
                f"README.md:{example.line} `{example.command}` prints something else now:\n"
                + "\n".join(actual)
            )
    finally:
        if capture:
            Path(capture).write_text("\n".join(captured) + "\n")
        ns.run("xdp-loader", "unload", "-a", "lo")
        if not dispatcher_dir_existed:
            with contextlib.suppress(OSError):
                os.rmdir(LIBXDP_DIR)
        if os.path.exists(XDP_LOADER_LOCK) and subprocess.run(["pgrep", "-x", "xdp-loader"]).returncode:
            os.unlink(XDP_LOADER_LOCK)
