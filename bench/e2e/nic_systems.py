"""The systems of the NIC-like topology: which XDP program the replay harness tail-calls for
each, what else it sets up in the receiver namespace, and its teardown. Nothing is attached
to the injecting device: the injector runs the harness on it directly."""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import netns
from balancers import REGISTRATION_PORT, SERVICE_PORT, Context, Nftables

from bench.micro_ebpflb import EbpflbUnderTest
from bench.micro_objects import BENCH_MAX_GATEWAYS, load_object
from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import CtlOp
from ebpflb.bpf.object_file import REPLY_NAT_PROGRAM
from ebpflb.dataplane.reply_nat import sync_reply_nat

AFFINITY_S = 3600  # no flow expires during the run
# Source ports the affinity run's frames cycle through: far fewer than the flow table (65536), so
# every flow is found, mostly in the per-CPU flow cache (8192) in front of it.
AFFINITY_CLIENTS = 1024
# Counters of ebpflb recorded per point (summed over CPUs).
EBPFLB_COUNTERS = ("service", "no_gateway_passed", "unbalanced", "forwarded", "stale_picks", "rebuilds",
                   "replies_nat", "flows_created", "found_dead")


@dataclass
class NicEnv:
    """Where one system runs: the namespaces and gateways (ctx), the device frames arrive on,
    the compiled bench/bpf objects."""

    ctx: Context
    ifname: str
    objects: dict[str, Path]


class NicSystem:
    key = ""
    label = ""
    balances = True  # False for the ceiling (weight accuracy is meaningless there)
    echoes = False  # gateways send every datagram back to the client
    clients = 1  # source ports the replay harness cycles through

    def __init__(self) -> None:
        self.objects: list[libbpf.BpfObject] = []

    def weights(self, weights: list[int]) -> list[int]:
        return weights

    def setup(self, env: NicEnv) -> int:
        """Returns the fd of the XDP program under test."""
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        return {}

    def teardown(self, env: NicEnv) -> None:
        """Must be safe after a partial setup."""
        for obj in self.objects:
            obj.close()
        self.objects.clear()

    def _load(self, env: NicEnv, name: str, program: str, rodata: dict[str, bytes]) -> int:
        obj = load_object(env.objects[name], rodata)
        self.objects.append(obj)
        return obj.program_fd(program)


class Ceiling(NicSystem):
    key = "nic-ceiling"
    label = "ceiling: XDP rewrite to 1 port"
    balances = False

    def setup(self, env: NicEnv) -> int:
        return self._load(env, "fixed_port", "fixed_port_xdp",
                          {".rodata.fixed": struct.pack("<H", env.ctx.ports[0])})


class Spread(NicSystem):
    key = "nic-spread"
    label = "spread: XDP round robin, N ports"

    def weights(self, weights: list[int]) -> list[int]:
        return [1] * len(weights)  # unweighted: its weight error is against equal shares

    def setup(self, env: NicEnv) -> int:
        ports = env.ctx.ports + [0] * (BENCH_MAX_GATEWAYS - len(env.ctx.ports))
        config = struct.pack(f"<I{BENCH_MAX_GATEWAYS}H", len(env.ctx.ports), *ports)
        return self._load(env, "spread", "spread_xdp", {".rodata.spread": config})


class NftablesNumgen(NicSystem):
    """XDP_PASS under the harness, then the socket topology's nftables rule set."""

    key = "nic-nftables"
    label = "nftables numgen (raw prerouting)"

    def __init__(self) -> None:
        super().__init__()
        self.nft = Nftables()
        self.env: NicEnv | None = None

    def setup(self, env: NicEnv) -> int:
        self.env = env
        self.nft.setup(env.ctx)
        return self._load(env, "xdp_pass", "xdp_pass", {})

    def counters(self) -> dict[str, int]:
        return {"rule_packets": self.nft.rule_packets(self.env.ctx)} if self.env else {}

    def teardown(self, env: NicEnv) -> None:
        self.nft.teardown(env.ctx)
        super().teardown(env)


class Ebpflb(NicSystem):
    """The shipped object, loaded with ebpflb's own loader over a pin directory of this run,
    static gateways added through its control program."""

    def __init__(self, key: str, label: str, affinity: bool = False, reply_nat: bool = False,
                 owned_by_loopback: bool = False) -> None:
        super().__init__()
        self.owned_by_loopback = owned_by_loopback  # registrations from 127.0.0.1 may re-weight them
        self.key = key
        self.label = label
        self.affinity = affinity
        self.reply_nat = reply_nat
        self.echoes = reply_nat
        self.clients = AFFINITY_CLIENTS if affinity else 1
        self.lb: EbpflbUnderTest | None = None

    def setup(self, env: NicEnv) -> int:
        pin_path = os.path.join(netns.BPFFS, f"{env.ctx.run_tag}-{self.key}-{len(env.ctx.ports)}")
        self.lb = EbpflbUnderTest(SERVICE_PORT, REGISTRATION_PORT, AFFINITY_S if self.affinity else 0.0,
                                  pin_path=pin_path, reply_nat=self.reply_nat)
        self.lb.open()
        if self.owned_by_loopback:
            self.lb.add_static_owned_by_loopback(env.ctx.ports, env.ctx.weights, listen=False)
        else:
            for port, weight in zip(env.ctx.ports, env.ctx.weights):
                self.lb.instance.control(CtlOp.ADD_STATIC, port, weight)
        if self.reply_nat:
            # Replies leave on the injecting device: its egress gets the tc program, as `load` does.
            lb = self.lb
            netns.run_in_namespace(env.ctx.receiver_ns, lambda: sync_reply_nat(
                lb.pin_path, lb.obj.program_fd(REPLY_NAT_PROGRAM), [socket.if_nametoindex(env.ifname)]))
        return self.lb.xdp_fd

    @property
    def pin_path(self) -> str:
        return self.lb.pin_path if self.lb else ""

    @property
    def xdp_fd(self) -> int:
        return self.lb.xdp_fd if self.lb else -1

    def counters(self) -> dict[str, int]:
        if self.lb is None:
            return {}
        counters = self.lb.counters().global_
        return {name: int(getattr(counters, name)) for name in EBPFLB_COUNTERS}

    def teardown(self, env: NicEnv) -> None:
        if self.lb is not None:
            self.lb.close()  # removes its pins, the reply NAT link's with them (detaching it)
            self.lb = None
        super().teardown(env)


WEIGHT_CHANGE_KEY = "nic-weight-change"
WEIGHT_CHANGE_GATEWAYS = 256


def all_systems() -> list[NicSystem]:
    return [
        Ceiling(),
        Spread(),
        Ebpflb("nic-ebpflb", "ebpflb per datagram"),
        Ebpflb("nic-ebpflb-affinity", f"ebpflb --affinity ({AFFINITY_CLIENTS} clients)", affinity=True),
        Ebpflb("nic-ebpflb-reply-nat", "ebpflb + reply NAT, gateways echo", reply_nat=True),
        NftablesNumgen(),
    ]


def weight_change_system() -> Ebpflb:
    return Ebpflb(WEIGHT_CHANGE_KEY, f"ebpflb, {WEIGHT_CHANGE_GATEWAYS} gateways", owned_by_loopback=True)
