"""One system under test with N gateways, set up in namespaces of its own and kept ready,
so that measurements of all systems can be interleaved."""
from __future__ import annotations

import tempfile

import netns
from balancers import REGISTRATION_PORT, Balancer, Context, Nftables
from measure import ConfigResult, Options, Point, measure_point
from programs import Gateways

FIRST_GATEWAY_PORT = 4001
WARMUP_RATE = 20000
WARMUP_SECONDS = 0.5
# An unpaced run first, discarded: the first saturated run of a fresh setup is reliably slower.
SETTLE_SECONDS = 1.5


class Rig:
    def __init__(self, balancer: Balancer, weights: list[int], run_tag: str,
                 binaries: dict[str, str], options: Options, scratch_root: str) -> None:
        self.balancer = balancer
        self.binaries = binaries
        self.options = options
        ports = [FIRST_GATEWAY_PORT + i for i in range(len(weights))]
        self.result = ConfigResult(balancer.key, balancer.label, balancer.topology,
                                   balancer.balances, ports, weights)
        scratch = tempfile.mkdtemp(prefix=f"{balancer.key}-{len(weights)}-", dir=scratch_root)
        base = f"{run_tag}-{balancer.key}"
        if balancer.topology == "veth":
            self.pair: netns.VethPair | None = netns.VethPair(f"{base}-snd", f"{base}-rcv")
            self.ctx = Context(run_tag, self.pair.sender_ns, self.pair.receiver_ns, ports, weights, scratch)
        else:
            self.pair = None
            self.ctx = Context(run_tag, base, base, ports, weights, scratch)
        self.gateways: Gateways | None = None

    @property
    def ok(self) -> bool:
        return not self.result.error

    def fail(self, error: Exception) -> None:
        self.result.error = str(error)
        print(f"   {self.balancer.label}, N={len(self.ctx.ports)} FAILED: {error}", flush=True)

    def start(self) -> None:
        """Namespaces, balancer, gateways, then a warm-up that must reach every gateway."""
        try:
            if self.pair:
                self.pair.create()
            else:
                netns.create_namespace(self.ctx.receiver_ns)
            self.balancer.setup(self.ctx)
            register = REGISTRATION_PORT if self.balancer.registers else None
            self.gateways = Gateways(self.binaries["gateway"], self.ctx.receiver_ns, self.ctx.ports,
                                     self.ctx.weights, self.options.gateway_cpu, register,
                                     self.options.gateway_poll_us)
            self.balancer.ready(self.ctx)
            self.check_warmup(self._measure(WARMUP_RATE, WARMUP_SECONDS))
            self._measure(0, SETTLE_SECONDS)
            self.gateways.pause()
        except Exception as error:  # one broken system must not lose the others' results
            self.fail(error)

    def check_warmup(self, point: Point) -> None:
        if self.balancer.balances:
            silent = [p for p, c in point.per_port.items() if c == 0]
            if silent:
                raise RuntimeError(f"warm-up: gateways {silent} received nothing: {point.per_port}")
        if point.loss > 0.01:
            raise RuntimeError(f"warm-up lost {100 * point.loss:.1f} % of {point.sent} datagrams")
        if isinstance(self.balancer, Nftables):
            # The rule counter shows the rewrite ran once per datagram.
            self.result.notes.append(
                f"nft rule counter after warm-up: {self.balancer.rule_packets(self.ctx)} "
                f"for {point.sent} datagrams sent")

    def _measure(self, rate: float, seconds: float) -> Point:
        return measure_point(self.ctx, self.balancer, self.gateways, self.binaries["sender"],
                             rate, seconds, self.options)

    def measure(self, rate: float) -> Point | None:
        if not self.ok:
            return None
        self.gateways.resume()
        try:
            point = self._measure(rate, self.options.seconds)
        except Exception as error:
            self.fail(error)
            return None
        finally:
            self.gateways.pause()
        self.result.points.append(point)
        return point

    def profile(self, seconds: float) -> None:
        """One extra unpaced point under perf; the shares go to result.profile, the point is not kept."""
        import perf_profile
        if not self.ok:
            return
        recorder = perf_profile.Recorder(self.options.sender_cpu, self.ctx.scratch)
        self.gateways.resume()
        try:
            measure_point(self.ctx, self.balancer, self.gateways, self.binaries["sender"], 0, seconds,
                          self.options, (recorder.start, recorder.stop))
            self.result.profile = recorder.shares(("sender", f"ksoftirqd/{self.options.sender_cpu}"))
        except Exception as error:  # a profile is an extra: never fail the run for it
            self.result.notes.append(f"profile failed: {error}")
        finally:
            recorder.stop()
            self.gateways.pause()

    def stop(self) -> None:
        if self.gateways:
            self.gateways.stop()
        self.balancer.teardown(self.ctx)
        if self.pair:
            self.pair.delete()
        else:
            netns.delete_namespace(self.ctx.receiver_ns)
