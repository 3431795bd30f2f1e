"""Where the sender CPU's time goes (perf call-graph profile), to explain throughput gaps."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Callable

# Kernel functions whose inclusive share tells what a balancer adds to the datagram path.
SYMBOLS = {
    "do_xdp_generic": "generic XDP (all)",
    "pskb_expand_head": "skb head copy (XDP headroom)",
    "skb_pp_cow_data": "page-pool copy (veth XDP)",
    "veth_xdp_rcv": "veth XDP NAPI",
    "bpf_prog_run_generic_xdp": "XDP program run",
    "nft_do_chain": "nftables chain",
    "ip_finish_output2": "IP output + local receive",
}
PROGRAM_PATTERN = re.compile(r"bpf_prog_\w+_ebpflb\w*")
LINE = re.compile(r"^\s*([\d.]+)%\s+([\d.]+)%\s+\[[k.]\]\s+(\S+)")


def available() -> bool:
    return shutil.which("perf") is not None


def profile(run_point: Callable[[], None], cpu: int, comms: tuple[str, ...], seconds: float,
            scratch: str) -> dict[str, float]:
    """Record CPU `cpu` while run_point() sends; inclusive % of samples of `comms` per symbol."""
    data = os.path.join(scratch, "perf.data")
    recorder = subprocess.Popen(["perf", "record", "-q", "-C", str(cpu), "-g", "-o", data,
                                 "--", "sleep", str(seconds)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_point()
    finally:
        recorder.wait(timeout=seconds + 30)
    report = subprocess.run(
        ["perf", "report", "-i", data, "--comm", ",".join(comms), "--percentage", "relative",
         "--children", "--sort", "sym", "--stdio", "-g", "none"],
        capture_output=True, text=True, timeout=120, check=False).stdout
    os.unlink(data)
    shares: dict[str, float] = {}
    for line in report.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        children, own, symbol = float(match.group(1)), float(match.group(2)), match.group(3)
        if PROGRAM_PATTERN.fullmatch(symbol):
            # Self time: call chains through JITed code are unreliable, its own cycles are not.
            shares["ebpflb program (self)"] = own
        elif symbol in SYMBOLS:
            shares[SYMBOLS[symbol]] = children
    return shares
