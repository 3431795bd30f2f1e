"""`ebpflb trace`: follows the kernel trace pipe and shows this program's events (lines the
object writes with bpf_printk when loaded with -t, all starting with "ebpflb: ")."""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Callable, Collection, Optional

from ebpflb.errors import EbpflbError

TRACEFS = "/sys/kernel/tracing"
TRACE_DIRS = (TRACEFS, "/sys/kernel/debug/tracing")
QUIET_HINT_S = 3.0

# "  comm-pid  [cpu] flags  12345.678901: bpf_trace_printk: ebpflb: add port=1 weight=2 slot=0"
LINE = re.compile(r"\s(?P<ts>\d+\.\d+):\s+(?:\S+:\s+)?ebpflb: (?P<event>\w+)(?P<fields>(?:\s+\w+=\S*)*)\s*$")
FIELD = re.compile(r"(\w+)=(\S*)")

# The kernel's reason words (kernel/registry.bpf.h, ebpflb.bpf.c), as a reader wants them.
# Rejections decided before the weight is read: the kernel prints weight=0 for them.
WEIGHT_UNREAD = {"source", "short", "malformed"}
REASONS = {
    "weight": "weight above 65535",
    "full": "gateway table full",
    "unknown": "no such gateway",
    "source": "not from loopback on lo",
    "malformed": "malformed datagram",
    "short": "payload under 4 bytes",
    "owner": "registered from another address",
    "port": "port outside --gateway-ports",
    "request": "bad request (port 0)",
}


@dataclass
class TraceEvent:
    kernel_s: float  # trace clock: seconds since boot
    wall: float  # the same moment as a Unix time, from the offset of CLOCK_MONOTONIC
    event: str  # add, weight, remove, expire, reject
    port: Optional[int]
    weight: Optional[int]
    slot: Optional[int]
    reason: Optional[str]

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def reason_text(self) -> str:
        return REASONS.get(self.reason or "", self.reason or "")


def parse_line(line: str, wall_offset: float = 0.0) -> Optional[TraceEvent]:
    """One trace_pipe line, if it is one of ours."""
    m = LINE.search(line)
    if not m:
        return None
    fields = dict(FIELD.findall(m.group("fields")))

    def number(name: str) -> Optional[int]:
        value = fields.get(name, "")
        return int(value) if value.isdigit() else None

    ts = float(m.group("ts"))
    reason = fields.get("reason")
    return TraceEvent(
        kernel_s=ts,
        wall=ts + wall_offset,
        event=m.group("event"),
        port=number("port"),
        weight=None if reason in WEIGHT_UNREAD else number("weight"),
        slot=number("slot"),
        reason=reason,
    )


def trace_pipe(announce: Callable[[str], None]) -> str:
    """The trace pipe; mounts tracefs at /sys/kernel/tracing if no tracing directory exists."""
    for directory in TRACE_DIRS:
        if os.path.exists(os.path.join(directory, "trace_pipe")):
            return os.path.join(directory, "trace_pipe")
    done = subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], capture_output=True, text=True)
    if done.returncode != 0 or not os.path.exists(os.path.join(TRACEFS, "trace_pipe")):
        raise EbpflbError(
            f"no kernel trace pipe: mount tracefs with `mount -t tracefs nodev {TRACEFS}` "
            f"({done.stderr.strip() or 'mount failed'})"
        )
    announce(f"mounted tracefs at {TRACEFS}")
    return os.path.join(TRACEFS, "trace_pipe")


def tracing_is_on(pipe: str) -> bool:
    with contextlib.suppress(OSError), open(os.path.join(os.path.dirname(pipe), "tracing_on")) as f:
        return f.read().strip() != "0"
    return True


def follow(
    pipe: str,
    on_event: Callable[[TraceEvent], None],
    on_quiet: Callable[[], None],
    count: Optional[int] = None,
    timeout: Optional[float] = None,
    ports: Collection[int] = (),
) -> int:
    """Reads the pipe until `count` matching events or `timeout` seconds; calls on_quiet once if
    no event came in the first few seconds. Returns the number of events shown.

    Reading trace_pipe consumes it: lines read here are gone for other readers."""
    wall_offset = time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)
    start = time.monotonic()
    shown, pending, hinted = 0, b"", False
    fd = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        while count is None or shown < count:
            now = time.monotonic()
            if timeout is not None and now - start >= timeout:
                break
            if not hinted and not shown and now - start >= QUIET_HINT_S:
                hinted = True
                on_quiet()
            wait = 0.5 if timeout is None else max(0.0, min(0.5, start + timeout - now))
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for raw in lines:
                event = parse_line(raw.decode(errors="replace"), wall_offset)
                if event is None or (ports and event.port not in ports):
                    continue
                on_event(event)
                shown += 1
                if count is not None and shown >= count:
                    break
    finally:
        os.close(fd)
    return shown
