"""Lines of the trace pipe as `ebpflb trace` parses them, without a kernel. The command against
the real trace pipe: tests/system/test_trace.py."""

from __future__ import annotations

import re
from pathlib import Path

from ebpflb.cli.trace_events import REASONS, WEIGHT_UNREAD, parse_line


def test_parse_line_of_the_trace_pipe() -> None:
    line = (
        "          <idle>-0       [001] ..s2.  4242.123456: bpf_trace_printk: "
        "ebpflb: reject port=40000 weight=70000 reason=weight"
    )
    event = parse_line(line, wall_offset=1000.0)
    assert event is not None
    assert (event.event, event.port, event.weight, event.slot, event.reason) == ("reject", 40000, 70000, None, "weight")
    assert (event.kernel_s, event.wall) == (4242.123456, 5242.123456)
    short = parse_line(
        "  python3-77  [000] b..1.  5.000001: bpf_trace_printk: ebpflb: reject port=9 weight=0 reason=short"
    )
    assert short is not None and (short.weight, short.reason_text) == (None, "payload under 4 bytes")
    assert parse_line("  python3-77  [000] .....  1.000000: bpf_trace_printk: other: add port=1") is None


def test_every_reason_word_of_the_kernel_has_a_text() -> None:
    """The words are defined once, in the kernel's reject_word(); the reader's texts follow them."""
    source = (Path(__file__).resolve().parents[2] / "kernel" / "registry.bpf.h").read_text()
    body = re.search(r"reject_word\(__u32 reason\)\s*\{(.*?)\n\}", source, re.S)
    assert body
    words = set(re.findall(r'return "(\w+)";', body.group(1)))
    assert words == set(REASONS)
    assert WEIGHT_UNREAD <= words
