"""Never to a port that is not a live gateway, with both CPUs racing changes and traffic.

Two processes, one pinned on each CPU, run service datagrams through BPF_PROG_TEST_RUN for
30 s and record each datagram's output port with the time before and after the run; the test
process meanwhile adds and removes gateways (by registration datagram and by control
operation) and records when each port was live. A datagram is wrong if its port was not live
at any moment of its run, or if it went unbalanced although gateways were live (there always
are)."""

from __future__ import annotations

import bisect
import multiprocessing
import os
import random
import time
from array import array
from collections.abc import Iterator

import pytest

from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import CtlOp

from .. import packets as P
from ..dataplane import XDP_DROP, XDP_PASS, Dataplane, add_static_owned_by_loopback, shared

pytestmark = pytest.mark.kernel

DURATION_S = 30.0
POOL = range(20000, 20512)  # ports that come and go; a removed one rarely comes back soon
LIVE_MIN, LIVE_MAX = 8, 24
PORT_OFFSET = 14 + 20 + 2
SERVICE = P.udp4(P.SERVICE_PORT, b"stress")


@pytest.fixture(scope="module")
def dataplane(bpffs: str) -> Iterator[Dataplane]:
    with shared(bpffs) as plane:
        yield plane


def traffic(prog_fd: int, cpu: int, until_ns: int, path: str) -> None:
    """Child process: datagrams on one CPU until `until_ns`; writes (start, end, port) triples."""
    os.sched_setaffinity(0, {cpu})
    records = array("q")
    while (start := time.monotonic_ns()) < until_ns:
        verdict, out, _ = libbpf.test_run(prog_fd, SERVICE)
        end = time.monotonic_ns()
        port = int.from_bytes(out[PORT_OFFSET : PORT_OFFSET + 2], "big") if verdict == XDP_PASS else -1
        records.extend((start, end, port))
    with open(path, "wb") as f:
        records.tofile(f)


def change(dataplane: Dataplane, port: int, weight: int, by_packet: bool) -> None:
    if by_packet:
        assert dataplane.run(P.registration4(port, weight))[0] == XDP_DROP
    elif weight:  # owned by 127.0.0.1 as datagrams are, so either path may change it next
        add_static_owned_by_loopback(dataplane.instance, port, weight)
    else:
        dataplane.instance.control(CtlOp.SET_WEIGHT, port=port, weight=0)


def test_no_datagram_to_a_port_that_was_not_live(dataplane: Dataplane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    rng = random.Random(2152)
    # live intervals per port: [added_before_ns, removed_after_ns]; removed_after is None while live
    live: dict[int, tuple[int, int | None]] = {}
    intervals: dict[int, list[tuple[int, int | None]]] = {p: [] for p in POOL}
    for port in rng.sample(list(POOL), LIVE_MIN):
        start = time.monotonic_ns()
        change(dataplane, port, rng.randint(1, 100), by_packet=False)
        live[port] = (start, None)
    until = time.monotonic_ns() + int(DURATION_S * 1e9)
    ctx = multiprocessing.get_context("fork")
    paths = [str(tmp_path / f"cpu{cpu}.bin") for cpu in cpus[:2]]
    children = [
        ctx.Process(target=traffic, args=(dataplane.prog_fd, cpu, until, path)) for cpu, path in zip(cpus, paths)
    ]
    for child in children:
        child.start()
    changes = 0
    try:
        while time.monotonic_ns() < until:
            by_packet = rng.random() < 0.5
            if len(live) > LIVE_MIN and (len(live) >= LIVE_MAX or rng.random() < 0.5):
                port = rng.choice(list(live))
                change(dataplane, port, 0, by_packet)
                intervals[port].append((live.pop(port)[0], time.monotonic_ns()))
            elif rng.random() < 0.3 and live:
                change(dataplane, rng.choice(list(live)), rng.randint(1, 100), by_packet)  # re-weight
            else:
                port = rng.choice([p for p in POOL if p not in live])
                live[port] = (time.monotonic_ns(), None)
                change(dataplane, port, rng.randint(1, 100), by_packet)
            changes += 1
    finally:
        for child in children:
            child.join(timeout=DURATION_S + 30)
    assert all(child.exitcode == 0 for child in children)
    for port, (added, _) in live.items():
        intervals[port].append((added, None))

    starts = {p: [a for a, _ in sorted(iv)] for p, iv in intervals.items()}
    ordered = {p: sorted(iv) for p, iv in intervals.items()}
    datagrams = wrong = unbalanced = 0
    for path in paths:
        records = array("q")
        with open(path, "rb") as f:
            records.frombytes(f.read())
        datagrams += len(records) // 3
        for k in range(0, len(records), 3):
            start, end, port = records[k], records[k + 1], records[k + 2]
            if port == P.SERVICE_PORT or port < 0:
                unbalanced += 1
                continue
            if port not in ordered:
                wrong += 1
                continue
            # the last interval added before the run ended must reach into the run
            i = bisect.bisect_right(starts[port], end) - 1
            if i < 0 or (ordered[port][i][1] is not None and ordered[port][i][1] < start):
                wrong += 1
    counters = dataplane.counters()
    print(f"{datagrams} datagrams on 2 CPUs, {changes} changes, {counters['rebuilds']} schedules published, "
          f"{counters['stale_picks']} stale entries replaced from the live list")  # fmt: skip
    assert datagrams > 100_000 and changes > 10_000, "too little traffic or churn to mean anything"
    assert wrong == 0, f"{wrong} of {datagrams} datagrams went to a port that was not live"
    assert unbalanced == 0, f"{unbalanced} datagrams went unbalanced while gateways were live"
