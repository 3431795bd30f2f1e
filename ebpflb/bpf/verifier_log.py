"""The kernel verifier's log of a failed load: found in libbpf's messages (libbpf prints it
whole, as one message), kept whole in a file, and cut to the lines that say why for the error."""

from __future__ import annotations

import os
import re
import tempfile
from typing import Optional

# libbpf: "prog 'NAME': -- BEGIN PROG LOAD LOG --\n<log>-- END PROG LOAD LOG --"
LOAD_LOG = re.compile(r"prog '([^']*)': -- BEGIN PROG LOAD LOG --\n(.*?)-- END PROG LOAD LOG --", re.DOTALL)
# the verifier's closing statistics, printed after the line that failed
PROCESSED = re.compile(r"^processed \d+ insns")


def find(messages: list[str]) -> Optional[tuple[str, str]]:
    """(program name, verifier log) of the last failed program load in libbpf's messages."""
    for message in reversed(messages):
        found = LOAD_LOG.search(message)
        if found:
            return found.group(1), found.group(2)
    return None


def reason(log: str, count: int = 3) -> list[str]:
    """The last non-empty lines before the verifier's statistics: where it stopped, and why."""
    lines: list[str] = []
    for line in log.splitlines():
        if PROCESSED.match(line):
            break
        if line.strip():
            lines.append(line.strip())
    return lines[-count:]


def save(log: str) -> str:
    """Writes the whole log to a new file under the temporary directory; returns its path."""
    fd, path = tempfile.mkstemp(prefix="ebpflb-verifier-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(log)
    return path


def explain(messages: list[str]) -> Optional[str]:
    """One line for a load the verifier refused, or None if libbpf printed no verifier log."""
    found = find(messages)
    if found is None:
        return None
    program, log = found
    return (
        f"the kernel verifier refused program {program}: {' | '.join(reason(log)) or 'no reason given'} "
        f"(whole verifier log in {save(log)})"
    )
