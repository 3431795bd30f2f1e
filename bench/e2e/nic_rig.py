"""One system of the NIC-like topology with N gateways, in namespaces of its own and kept ready
so that the systems' points can be interleaved: a veth pair whose receiver end gets the
injected frames (nothing attached to it), the replay harness on top of the program under test,
the gateway sockets drained on the other CPU, and, for echoing gateways, a client socket at the
other end of the pair that counts the replies."""
from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path
from typing import Protocol

import cpu
import measure
import netns
from balancers import SERVICE_PORT, Context
from live_frames import Injector
from measure import DRAIN_S, Options
from nic_measure import NicPoint, NicResult
from nic_systems import NicEnv, NicSystem
from programs import Gateways
from rig import FIRST_GATEWAY_PORT

from bench.micro_objects import Replay, ReplayClients, ReplayHarness
from bench.micro_packets import udp4_frame

CLIENT_PORT = 40000
SETTLE_SECONDS = 1.0  # an unpaced point first, discarded (a fresh set-up's first is slower)


class During(Protocol):
    """Something done while frames are injected (weight changes)."""

    def start(self) -> None: ...

    def stop(self) -> int: ...


def mac_bytes(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


class NicRig:
    def __init__(self, system: NicSystem, weights: list[int], run_tag: str, binaries: dict[str, str],
                 objects: dict[str, Path], options: Options, scratch_root: str) -> None:
        self.system = system
        self.binaries = binaries
        self.options = options
        n = len(weights)
        ports = [FIRST_GATEWAY_PORT + i for i in range(n)]
        weights = system.weights(weights)
        self.result = NicResult(system.key, system.label, "nic", system.balances, ports, weights)
        scratch = tempfile.mkdtemp(prefix=f"{system.key}-{n}-", dir=scratch_root)
        base = f"{run_tag}-{system.key.removeprefix('nic-')}{n}"
        self.pair = netns.VethPair(f"{base}-cli", f"{base}-rcv")
        ctx = Context(run_tag, self.pair.sender_ns, self.pair.receiver_ns, ports, weights, scratch)
        self.env = NicEnv(ctx, netns.RECEIVER_VETH, objects)
        self.gateways: Gateways | None = None
        self.clients: Gateways | None = None
        self.harness: ReplayHarness | None = None
        self.injector: Injector | None = None
        self.frame = b""

    @property
    def ok(self) -> bool:
        return not self.result.error

    def fail(self, error: Exception) -> None:
        self.result.error = str(error)
        print(f"   {self.system.label}, N={len(self.env.ctx.ports)} FAILED: {error}", flush=True)

    def start(self) -> None:
        ctx = self.env.ctx
        try:
            self.pair.create()
            # As from a NIC: to the device's own MAC and an address of its namespace.
            self.frame = udp4_frame(
                CLIENT_PORT, SERVICE_PORT, bytes(self.options.payload),
                socket.inet_aton(netns.SENDER_ADDR), socket.inet_aton(netns.RECEIVER_ADDR),
                mac_bytes(netns.link_mac(ctx.sender_ns, netns.SENDER_VETH)),
                mac_bytes(netns.link_mac(ctx.receiver_ns, netns.RECEIVER_VETH)))
            prog_fd = self.system.setup(self.env)
            replay = self.env.objects["replay_clients" if self.system.clients > 1 else "replay"]
            self.harness = (ReplayClients(replay, self.frame, self.system.clients) if self.system.clients > 1
                            else Replay(replay, self.frame))
            self.harness.target(prog_fd)
            self.gateways = Gateways(self.binaries["gateway"], ctx.receiver_ns, ctx.ports, ctx.weights,
                                     self.options.gateway_cpu, None, self.options.gateway_poll_us,
                                     echo=self.system.echoes)
            if self.system.echoes:
                self.clients = Gateways(self.binaries["gateway"], ctx.sender_ns, [CLIENT_PORT], [1],
                                        self.options.gateway_cpu, None, self.options.gateway_poll_us)
            self.injector = Injector(ctx.receiver_ns, self.env.ifname, self.options.sender_cpu)
            self.check_warmup(self._measure(0.0, calls=1))
            self._measure(SETTLE_SECONDS)
            self._pause()
        except Exception as error:  # one broken system must not lose the others' results
            self.fail(error)

    def check_warmup(self, point: NicPoint) -> None:
        if self.system.balances:
            silent = [p for p, c in point.per_port.items() if c == 0]
            if silent:
                raise RuntimeError(f"warm-up: gateways {silent} received nothing: {point.per_port}")
        elif point.per_port[self.env.ctx.ports[0]] != point.delivered:
            raise RuntimeError(f"warm-up: the ceiling reached other ports: {point.per_port}")
        if point.loss > 0.01 and not self.system.echoes:  # echoing gateways may fall behind: measured
            raise RuntimeError(f"warm-up lost {100 * point.loss:.1f} % of {point.sent} frames "
                               f"(UDP counters {point.udp_delta}, system counters {point.counters})")
        self.result.notes.append(f"warm-up: {point.sent} frames, {point.delivered} delivered, "
                                 f"UDP counters {point.udp_delta}, "
                                 f"counters {point.counters}"
                                 + (f", replies {point.replies}" if self.clients else "")
                                 + ("" if point.fifo else ", injector NOT under SCHED_FIFO"))

    def _pause(self) -> None:
        for gateways in (self.gateways, self.clients):
            if gateways:
                gateways.pause()

    def _resume(self) -> None:
        for gateways in (self.gateways, self.clients):
            if gateways:
                gateways.resume()

    def _measure(self, seconds: float, calls: int | None = None, during: During | None = None) -> NicPoint:
        waited_from = time.time()
        background = cpu.wait_for_quiet(max_wait_s=min(5.0, measure.QUIET_WAIT_BUDGET_S[0]))
        measure.QUIET_WAIT_BUDGET_S[0] = max(0.0, measure.QUIET_WAIT_BUDGET_S[0] - (time.time() - waited_from))
        before, counters_before = self.gateways.counts(), self.system.counters()
        replies_before = self.clients.counts()[CLIENT_PORT] if self.clients else 0
        udp_before = cpu.udp_counters(self.gateways.pid)
        busy_before, steal_before = cpu.busy_ns(), cpu.steal_ns()
        if during:
            during.start()
        try:
            injection = self.injector.inject(self.harness.fd, self.frame, seconds, calls)
        finally:
            changes = during.stop() if during else 0
        time.sleep(DRAIN_S)
        busy_after, steal_after = cpu.busy_ns(), cpu.steal_ns()
        after, counters_after = self.gateways.counts(), self.system.counters()
        replies_after = self.clients.counts()[CLIENT_PORT] if self.clients else 0
        udp_after = cpu.udp_counters(self.gateways.pid)
        keys = ("InErrors", "RcvbufErrors", "InCsumErrors", "NoPorts")
        return NicPoint(
            target_pps=0, sent=injection.frames, send_seconds=injection.elapsed_s,
            per_port={p: after[p] - before[p] for p in after},
            busy_ns=busy_after - busy_before,
            udp_delta={k: udp_after.get(k, 0) - udp_before.get(k, 0) for k in keys},
            background=background, steal_ns=steal_after - steal_before,
            background_after=cpu.busy_fraction(0.2),
            ksoftirqd_ns=injection.ksoftirqd_ns, net_rx=injection.net_rx, fifo=injection.fifo,
            replies=replies_after - replies_before, changes=changes,
            counters={k: counters_after[k] - counters_before.get(k, 0) for k in counters_after})

    def measure(self, during: During | None = None) -> NicPoint | None:
        """One point of options.seconds; the caller keeps it in whichever result it belongs to."""
        if not self.ok:
            return None
        self._resume()
        try:
            return self._measure(self.options.seconds, during=during)
        except Exception as error:
            self.fail(error)
            return None
        finally:
            self._pause()

    def profile(self, seconds: float) -> dict[str, float]:
        """One extra point under perf on the injecting CPU; the shares of its samples per symbol."""
        import perf_profile
        from live_frames import THREAD_NAME
        if not self.ok:
            return {}
        recorder = perf_profile.Recorder(self.options.sender_cpu, self.env.ctx.scratch)
        self._resume()
        try:
            recorder.start()
            time.sleep(0.2)  # perf is up before the first frame
            self.injector.inject(self.harness.fd, self.frame, seconds)
            recorder.stop()
            report = recorder.report((THREAD_NAME.decode(), f"ksoftirqd/{self.options.sender_cpu}"))
            top = ", ".join(f"{symbol} {share:.1f} %" for symbol, share in perf_profile.top_self(report))
            self.result.notes.append(f"profile of the injecting CPU, most self time: {top}")
            return perf_profile.parse(report)
        except Exception as error:  # a profile is an extra: never fail the run for it
            self.result.notes.append(f"profile failed: {error}")
            return {}
        finally:
            recorder.stop()
            self._pause()

    def stop(self) -> None:
        for gateways in (self.gateways, self.clients):
            if gateways:
                gateways.stop()
        if self.harness:
            self.harness.obj.close()
        self.system.teardown(self.env)
        self.pair.delete()
