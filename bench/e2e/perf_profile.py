"""Where the sender CPU's time goes (perf call-graph profile), to explain throughput gaps."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

# Kernel functions whose inclusive share tells what a balancer adds to the datagram path.
SYMBOLS = {
    "do_xdp_generic": "generic XDP (all)",
    "pskb_expand_head": "skb head copy (XDP headroom)",
    "skb_pp_cow_data": "page-pool copy (veth XDP)",
    "veth_xdp_rcv": "veth XDP NAPI",
    "bpf_prog_run_generic_xdp": "XDP program run",
    "nft_do_chain": "nftables chain",
    "ip_finish_output2": "IP output + local receive",
    # the NIC-like topology (BPF_PROG_TEST_RUN with live frames)
    "xdp_test_run_batch": "live frames: XDP batch (all)",
    "xdp_recv_frames": "skb build + stack receive",
    "__udp4_lib_rcv": "UDP receive",
    "page_pool_put_unrefed_netmem": "page pool recycle",
    "kmem_cache_alloc_bulk_noprof": "skb alloc",
}
PROGRAM_PATTERN = re.compile(r"bpf_prog_\w+_ebpflb\w*")
ANY_PROGRAM = re.compile(r"bpf_prog_[0-9a-f]+_\w+")
LINE = re.compile(r"^\s*([\d.]+)%\s+([\d.]+)%\s+\[[k.]\]\s+(\S+)")


def available() -> bool:
    return shutil.which("perf") is not None


class Recorder:
    """perf record on one CPU from start() to stop(): started right before the sender, so time
    spent waiting for an idle machine is not in the profile."""

    def __init__(self, cpu: int, scratch: str) -> None:
        self.cpu = cpu
        self.data = os.path.join(scratch, "perf.data")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["perf", "record", "-q", "-C", str(self.cpu), "-g", "-o", self.data],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)

    def shares(self, comms: tuple[str, ...]) -> dict[str, float]:
        """Inclusive % of the samples of `comms` per symbol of interest."""
        return parse(self.report(comms))

    def report(self, comms: tuple[str, ...]) -> str:
        """perf report of the samples of `comms` (inclusive and self % per symbol); the data
        file is removed."""
        report = subprocess.run(
            ["perf", "report", "-i", self.data, "--comm", ",".join(comms), "--percentage", "relative",
             "--children", "--sort", "sym", "--stdio", "-g", "none"],
            capture_output=True, text=True, timeout=120, check=False).stdout
        if os.path.exists(self.data):
            os.unlink(self.data)
        return report


def top_self(report: str, count: int = 8) -> list[tuple[str, float]]:
    """The symbols with the most self time (% of the samples), highest first."""
    own = [(m.group(3), float(m.group(2))) for m in map(LINE.match, report.splitlines()) if m]
    return sorted(own, key=lambda item: -item[1])[:count]


def parse(report: str) -> dict[str, float]:
    shares: dict[str, float] = {}
    for line in report.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        children, own, symbol = float(match.group(1)), float(match.group(2)), match.group(3)
        if ANY_PROGRAM.fullmatch(symbol):
            # Self time: call chains through JITed code are unreliable, its own cycles are not.
            key = "ebpflb program (self)" if PROGRAM_PATTERN.fullmatch(symbol) else "other BPF programs (self)"
            shares[key] = shares.get(key, 0.0) + own
        elif symbol in SYMBOLS:
            shares[SYMBOLS[symbol]] = children
    return shares
