"""The README's command examples, run for real so they cannot rot.

Every ```console block of README.md is a list of `$ command` lines, each followed by the output
it printed. This test runs the important ones in README order inside a fresh namespace (with a
veth named eth0, as on a real host) against the instance they load, with a pin path of its own
in place of /sys/fs/bpf/ebpflb, and compares each output with the README's after masking what
legitimately varies (numbers, column widths, the object's install path).

README_CAPTURE=FILE writes every command's real output to FILE, to refresh the README."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..netns import REPO, NetNS

pytestmark = pytest.mark.kernel

README = REPO / "README.md"
DEFAULT_PIN = re.compile(r"/sys/fs/bpf/ebpflb(?![-\w])")
# commands this test runs; others (make, pip, mount, run, trace) are shown but not run here
RUN_PREFIXES = ("ebpflb load", "ebpflb status", "ebpflb gateways", "ebpflb weights", "ebpflb object-path",
                "ebpflb unload", "python3 -c", "printf ", "xdp-loader ", "rm -r /sys/fs/bpf/")
MUST_BE_SHOWN = ("ebpflb load eth0", "ebpflb status", "ebpflb status --json", "ebpflb gateways",
                 "ebpflb gateways --json", "ebpflb gateways add", "ebpflb weights set", "ebpflb object-path",
                 "ebpflb unload", "python3 -c 'import socket,struct", "printf '\\x00\\x00\\x00", "UDP6:[::1]:3000",
                 "xdp-loader load -m skb -p", "xdp-loader unload -a lo")
LIBXDP_DIR = "/sys/fs/bpf/xdp"
XDP_LOADER_LOCK = "/run/xdp-loader.lck"


@dataclass
class Example:
    command: str
    line: int  # in README.md, for failure messages
    expected: list[str] = field(default_factory=list)


def console_examples(text: str) -> list[Example]:
    examples: list[Example] = []
    in_block = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_block = line.strip() == "```console" if not in_block else False
            continue
        if not in_block:
            continue
        if line.startswith("$ "):
            examples.append(Example(line[2:].removeprefix("sudo "), number))
        elif examples:
            examples[-1].expected.append(line)
    return examples


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
        command += f" --pin-path {pin_path}"
    return command


@pytest.fixture
def host_like_netns(netns: NetNS) -> NetNS:
    netns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
    netns.ip("link", "set", "eth0", "up")
    netns.ip("link", "set", "eth0-peer", "up")
    return netns


def test_readme_shows_the_important_commands() -> None:
    commands = [e.command for e in console_examples(README.read_text())]
    for wanted in MUST_BE_SHOWN:
        assert any(c.startswith(wanted) or wanted in c for c in commands), f"README shows no `{wanted}` example"


def test_readme_names_the_python_that_pyproject_requires() -> None:
    required = re.search(r'requires-python = ">=(\d+\.\d+)"', (REPO / "pyproject.toml").read_text())
    assert required, "pyproject.toml names no requires-python"
    assert set(re.findall(r"Python (\d+\.\d+)\+", README.read_text())) == {required.group(1)}


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
