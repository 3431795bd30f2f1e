"""The systems under test: how each one is set up in the receiver namespace and torn down again."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from netns import BPFFS, RECEIVER_ADDR, RECEIVER_VETH, in_ns, sh

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVICE_PORT = 2152
REGISTRATION_PORT = 3000
# Idle rigs' gateways are paused (no heartbeats) while other systems are measured.
GATEWAY_EXPIRY_S = 1800
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


@dataclass
class Context:
    """Where one configuration runs: its namespaces, gateways and scratch directory."""

    run_tag: str
    sender_ns: str
    receiver_ns: str
    ports: list[int]
    weights: list[int]
    scratch: str
    notes: list[str] = field(default_factory=list)


class Balancer:
    key = ""
    label = ""
    topology = "veth"  # "veth": sender -> veth -> receiver namespace; "lo": one namespace
    registers = False  # gateways heartbeat their weight to the registration port
    balances = True    # False for the no-LB ceiling (weight accuracy is meaningless there)

    def destination(self, ctx: Context) -> tuple[str, int]:
        return (self.service_addr(), SERVICE_PORT)

    def service_addr(self) -> str:
        return RECEIVER_ADDR if self.topology == "veth" else "127.0.0.1"

    def setup(self, ctx: Context) -> None:
        """Before the gateways start."""

    def ready(self, ctx: Context) -> None:
        """After the gateways started: wait until the balancer can forward to all of them."""

    def teardown(self, ctx: Context) -> None:
        """Must be safe to call after a partial setup."""


class Direct(Balancer):
    """No load balancer: the sender addresses the first gateway port itself."""

    balances = False

    def __init__(self, topology: str) -> None:
        self.topology = topology
        self.key = f"direct-{topology}"
        self.label = f"no LB, direct ({topology})"

    def destination(self, ctx: Context) -> tuple[str, int]:
        return (self.service_addr(), ctx.ports[0])


class Nftables(Balancer):
    """Stateless weighted port rewrite per datagram: numgen inc mod TOTAL -> port map, notrack."""

    key = "nftables"
    label = "nftables numgen (veth)"
    table = "ebpflb_bench"

    def ruleset(self, ctx: Context) -> str:
        slots, start = [], 0
        for port, weight in zip(ctx.ports, ctx.weights):
            slots.append(f"{start}-{start + weight - 1} : {port}")
            start += weight
        return (
            f"table ip {self.table} {{\n"
            "  chain prerouting {\n"
            "    type filter hook prerouting priority raw; policy accept;\n"
            f"    udp dport {SERVICE_PORT} notrack udp dport set numgen inc mod {start} "
            f"map {{ {', '.join(slots)} }} counter\n"
            "  }\n"
            "}\n"
        )

    def setup(self, ctx: Context) -> None:
        path = os.path.join(ctx.scratch, "nft.conf")
        with open(path, "w") as handle:
            handle.write(self.ruleset(ctx))
        sh(*in_ns(ctx.receiver_ns, ["nft", "-f", path]))

    def rule_packets(self, ctx: Context) -> int:
        out = sh(*in_ns(ctx.receiver_ns, ["nft", "-j", "list", "table", "ip", self.table]))
        for item in json.loads(out)["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
        return 0

    def teardown(self, ctx: Context) -> None:
        sh(*in_ns(ctx.receiver_ns, ["nft", "delete", "table", "ip", self.table]), check=False)


class Nginx(Balancer):
    """nginx stream UDP proxy, one worker, weighted upstream, no responses expected."""

    key = "nginx"
    label = "nginx stream (veth)"

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def config(self, ctx: Context) -> str:
        servers = "\n".join(f"    server 127.0.0.1:{p} weight={w};" for p, w in zip(ctx.ports, ctx.weights))
        return (
            f"load_module {NGINX_STREAM_MODULE};\n"
            "daemon off;\n"
            "worker_processes 1;\n"
            "worker_rlimit_nofile 200000;\n"
            f"pid {ctx.scratch}/nginx.pid;\n"
            f"error_log {ctx.scratch}/nginx-error.log error;\n"
            "events { worker_connections 100000; }\n"
            "stream {\n"
            "  upstream gateways {\n"
            f"{servers}\n"
            "  }\n"
            "  server {\n"
            # Same receive buffer as the gateways' sockets (the kernel caps it at rmem_max).
            f"    listen {RECEIVER_ADDR}:{SERVICE_PORT} udp rcvbuf=16m;\n"
            "    proxy_pass gateways;\n"
            "    proxy_responses 0;\n"
            "    proxy_timeout 1s;\n"
            "  }\n"
            "}\n"
        )

    def setup(self, ctx: Context) -> None:
        path = os.path.join(ctx.scratch, "nginx.conf")
        with open(path, "w") as handle:
            handle.write(self.config(ctx))
        argv = ["nginx", "-p", ctx.scratch, "-e", f"{ctx.scratch}/nginx-error.log", "-c", path]
        # Own session: the master and its worker share one process group we can end by id.
        self.proc = subprocess.Popen(in_ns(ctx.receiver_ns, argv), start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 5
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().strip()}")
            listening = sh(*in_ns(ctx.receiver_ns, ["ss", "-Hlun", f"sport = :{SERVICE_PORT}"]))
            if listening.strip():
                return
            time.sleep(0.1)
        raise RuntimeError("nginx did not start listening")

    def teardown(self, ctx: Context) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # The worker may outlive the master for a moment; the group id is still ours.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None


_EBPFLB_PYTHON = [sys.executable]


def ebpflb_cli() -> list[str]:
    return [_EBPFLB_PYTHON[0], "-m", "ebpflb"]


def ebpflb_env() -> dict[str, str]:
    # Works whether or not the package is pip-installed into the interpreter.
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=REPO_ROOT + (os.pathsep + path if path else ""))


def ebpflb_available() -> tuple[bool, str]:
    """Use this interpreter if it can run the CLI, else the repository's .venv."""
    reason = "no output"
    for python in (sys.executable, os.path.join(REPO_ROOT, ".venv", "bin", "python")):
        if not os.path.exists(python):
            continue
        result = subprocess.run([python, "-m", "ebpflb", "--help"], capture_output=True, text=True,
                                env=ebpflb_env(), cwd=REPO_ROOT, check=False)
        if result.returncode == 0:
            _EBPFLB_PYTHON[0] = python
            return True, ""
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return False, reason


class Ebpflb(Balancer):
    """ebpflb via its CLI; the gateways register themselves over the namespace's lo."""

    registers = True

    def __init__(self, topology: str, mode: str) -> None:
        self.topology = topology
        self.mode = mode
        self.key = f"ebpflb-{mode}-{topology}"
        kind = "native" if mode == "native" else "generic"
        self.label = f"ebpflb XDP {kind} ({topology})"

    def pin_path(self, ctx: Context) -> str:
        return os.path.join(BPFFS, f"{ctx.run_tag}-{self.key}")

    def cli(self, ctx: Context, *args: str, check: bool = True) -> str:
        argv = in_ns(ctx.receiver_ns, [*ebpflb_cli(), *args, "--pin-path", self.pin_path(ctx)])
        result = subprocess.run(argv, capture_output=True, text=True, env=ebpflb_env(),
                                cwd=REPO_ROOT, timeout=60, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"ebpflb {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def setup(self, ctx: Context) -> None:
        iface = RECEIVER_VETH if self.topology == "veth" else "lo"
        self.cli(ctx, "load", iface, "--mode", self.mode, "--port", str(SERVICE_PORT),
                 "--reg-port", str(REGISTRATION_PORT), "--expiry", str(GATEWAY_EXPIRY_S))

    def gateways(self, ctx: Context) -> list[dict]:
        return json.loads(self.cli(ctx, "gateways", "--json"))

    def ready(self, ctx: Context) -> None:
        deadline = time.time() + 10
        while time.time() < deadline:
            listed = {g["port"]: g["weight"] for g in self.gateways(ctx)}
            if listed == dict(zip(ctx.ports, ctx.weights)):
                return
            time.sleep(0.2)
        raise RuntimeError(f"gateways did not register: ebpflb lists {listed}")

    def teardown(self, ctx: Context) -> None:
        self.cli(ctx, "unload", check=False)
        shutil.rmtree(self.pin_path(ctx), ignore_errors=True)
