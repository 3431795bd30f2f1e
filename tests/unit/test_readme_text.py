"""README.md as text, running nothing: its console examples show the important commands, and
it names the Python version pyproject.toml requires. The examples are run for real by
tests/system/test_readme.py, which parses them with console_examples from here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..netns import REPO

README = REPO / "README.md"
MUST_BE_SHOWN = ("ebpflb load eth0", "ebpflb status", "ebpflb status --json", "ebpflb gateways",
                 "ebpflb gateways --json", "ebpflb gateways add", "ebpflb weights set", "ebpflb object-path",
                 "ebpflb unload", "python3 examples/minimal_gateway.py", "printf '\\x00\\x00\\x00", "UDP6:[::1]:3000",
                 "xdp-loader load -m skb -p", "xdp-loader unload -a lo")


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


def test_readme_shows_the_important_commands() -> None:
    commands = [e.command for e in console_examples(README.read_text())]
    for wanted in MUST_BE_SHOWN:
        assert any(c.startswith(wanted) or wanted in c for c in commands), f"README shows no `{wanted}` example"


def test_readme_names_the_python_that_pyproject_requires() -> None:
    required = re.search(r'requires-python = ">=(\d+\.\d+)"', (REPO / "pyproject.toml").read_text())
    assert required, "pyproject.toml names no requires-python"
    assert set(re.findall(r"Python (\d+\.\d+)\+", README.read_text())) == {required.group(1)}
