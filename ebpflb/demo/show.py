"""`make demo`: ebpflb balancing three gateway processes in a private network namespace.

Creates a namespace, loads ebpflb on its lo (expiry 3 s, pins in a directory of its own),
starts three gateway processes (ebpflb.gateway) with weights 1, 2 and 3 that heartbeat every
second, streams datagrams to the service port and shows each gateway's share next to its
weight share. Midway one gateway raises its weight, later another stops heartbeating and
expires. Then it removes everything it created, also on Ctrl-C or an error, and prints a
summary. Run as root: `python -m ebpflb.demo` (add --plain for line output in a terminal).

Over 300 lines because it is one script: the phases of the show read top to bottom as they
run; the namespace, the view and the gateway processes are in env.py, view.py and
gateway_process.py."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from rich.console import Console
from rich.live import Live

from ebpflb.bpf import defaults
from ebpflb.dataplane import Instance, config_for
from ebpflb.demo.env import (
    BPFFS,
    NAME_PREFIX,
    DemoSetupError,
    Namespace,
    mount_bpffs,
    remove_stale_leftovers,
    require_root,
    unmount_bpffs_if_empty,
)
from ebpflb.demo.view import Frame, Phase, Row, plain_event, plain_line, print_summary, render
from ebpflb.errors import EbpflbError

SERVICE_PORT = defaults.SERVICE_PORT
REG_PORT = defaults.REG_PORT
EXPIRY_S = 3.0
HEARTBEAT_S = 1.0
GATEWAYS = ((7001, 1), (7002, 2), (7003, 3))
RAISE_AT_S, RAISED_PORT, RAISED_WEIGHT = 7.0, 7001, 4
SILENCE_AT_S, SILENT_PORT = 14.0, 7002
RUN_AFTER_EXPIRY_S = 7.0
EXPIRY_TIMEOUT_S = 4 * EXPIRY_S
RATE_PER_S = 2000
TICK_S = 0.1
PLAIN_EVERY_S = 1.0


class GatewayProcess:
    """A `python -m ebpflb.demo.gateway_process` child; a thread reads its reports."""

    def __init__(self, port: int, weight: int) -> None:
        self.port = port
        self.state = "live"
        self.received = 0
        self.final: Optional[int] = None
        self.registered = threading.Event()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ebpflb.demo.gateway_process",
                "--port",
                str(port),
                "--weight",
                str(weight),
                "--interval",
                str(HEARTBEAT_S),
                "--reg-port",
                str(REG_PORT),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.reader = threading.Thread(target=self._read, name=f"gateway-{port}-reports", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "received":
                self.received = int(rest)
            elif word == "final":
                self.final = self.received = int(rest)
            elif word == "registered":
                self.registered.set()

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def quit(self, timeout: float = 5.0) -> None:
        """Asks it to deregister and exit; kills it if it does not."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.command("quit")
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=2)
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.state = "stopped"


class Sender(threading.Thread):
    """A steady stream of small datagrams to the service port on 127.0.0.1."""

    def __init__(self, sock: socket.socket, rate: int) -> None:
        super().__init__(name="sender", daemon=True)
        self.sock, self.rate = sock, rate
        self.sent = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        payload = b"ebpflb demo datagram...."
        while not self.stopping.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while self.sent < due:
                self.sock.sendto(payload, ("127.0.0.1", SERVICE_PORT))
                self.sent += 1
            time.sleep(0.005)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


@dataclass
class Outcome:
    phases: list[Phase]
    expiry_line: str
    sent: int
    received: int


class Demo:
    def __init__(self, console: Console, live: bool) -> None:
        self.console = console
        self.live_mode = live
        self.name = f"{NAME_PREFIX}{os.getpid()}"
        self.pin_path = f"{BPFFS}/{self.name}"
        self.cleanup_log: list[str] = []
        self.events: list[tuple[float, str]] = []
        self.t0 = time.monotonic()
        self.gateways: list[GatewayProcess] = []
        self.instance = Instance(self.pin_path)

    # ---------------------------------------------------------------- output

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def event(self, what: str, live: Optional[Live] = None) -> None:
        at = time.monotonic() - self.t0
        self.events.append((at, what))
        if live is None:
            self.say(plain_event(at, what))

    # ---------------------------------------------------------------- setup, with cleanup registered first

    def setup(self, stack: contextlib.ExitStack) -> None:
        require_root()
        for stale in remove_stale_leftovers():
            self.say(f"removed a leftover of an earlier, killed demo: {stale}")
        if mount_bpffs():
            self.say(f"mounted bpffs at {BPFFS}")
            stack.callback(self._unmount_bpffs)

        ns = Namespace(self.name)
        stack.callback(self._delete_namespace, ns)
        self.say(f"created network namespace {self.name} (lo up)")
        stack.enter_context(ns.entered())  # this thread, its threads and children live there now

        config = config_for(SERVICE_PORT, REG_PORT, EXPIRY_S, False, False, False)
        stack.callback(self._unload)
        attached = self.instance.load(["lo"], config, "skb")
        self.say(
            f"loaded ebpflb on {', '.join(f'{a.ifname} ({a.mode})' for a in attached)}: "
            f"service port {SERVICE_PORT}, registrations on {REG_PORT}, expiry {EXPIRY_S:g} s, pins in {self.pin_path}"
        )
        self.say(f"  (the same as: ebpflb load lo -e {EXPIRY_S:g} --pin-path {self.pin_path})")

        stack.callback(self._stop_gateways)
        for port, weight in GATEWAYS:
            self.gateways.append(GatewayProcess(port, weight))
        for gw in self.gateways:
            if not gw.registered.wait(10):
                raise DemoSetupError(f"gateway {gw.port} did not start (pid {gw.proc.pid})")
        self._wait_for(lambda: set(self.kernel_weights()) == {p for p, _ in GATEWAYS}, 5, "the gateways to register")
        for gw, (_, weight) in zip(self.gateways, GATEWAYS):
            self.say(
                f"started gateway process {gw.proc.pid} on port {gw.port}, weight {weight}, "
                f"heartbeat every {HEARTBEAT_S:g} s"
            )
        self.say(f"watch it from another terminal: nsenter --net={ns.path} ebpflb gateways --pin-path {self.pin_path}")

    def _unmount_bpffs(self) -> None:
        if unmount_bpffs_if_empty():
            self.cleanup_log.append(f"unmounted {BPFFS} (the demo had mounted it)")

    def _delete_namespace(self, ns: Namespace) -> None:
        ns.delete()
        self.cleanup_log.append(
            f"deleted namespace {ns.name}" if not ns.exists() else f"COULD NOT delete namespace {ns.name}"
        )

    def _unload(self) -> None:
        if os.path.exists(self.pin_path):
            try:
                self.instance.unload()
            except EbpflbError as e:
                self.cleanup_log.append(f"COULD NOT unload: {e}")
        left = os.path.exists(self.pin_path)
        self.cleanup_log.append(
            f"unloaded ebpflb and removed {self.pin_path}" if not left else f"COULD NOT remove {self.pin_path}"
        )

    def _stop_gateways(self) -> None:
        """Each gateway deregisters (weight 0) and exits; one that does not is killed."""
        running = [gw for gw in self.gateways if gw.proc.poll() is None]
        for gw in self.gateways:
            gw.quit()
        if running:
            self.cleanup_log.append(f"stopped {len(running)} gateway process(es); each deregistered with weight 0")

    def _wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise DemoSetupError(f"timed out waiting for {what}")
            time.sleep(0.02)

    # ---------------------------------------------------------------- kernel state

    def kernel_weights(self) -> dict[int, int]:
        return {g.port: g.weight for g in self.instance.snapshot().gateways}

    def kernel_packets(self) -> tuple[dict[int, int], dict[int, int]]:
        snap = self.instance.snapshot()
        return {g.port: g.weight for g in snap.gateways}, {g.port: g.packets for g in snap.gateways}

    # ---------------------------------------------------------------- the show

    def run(self, stack: contextlib.ExitStack) -> Outcome:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # created in the namespace
        stack.callback(sock.close)
        sender = Sender(sock, RATE_PER_S)
        stack.callback(sender.stop)
        weights, packets = self.kernel_packets()
        phases = [Phase(1, "weights 1:2:3", weights, 0.0, packets)]
        self.t0 = time.monotonic()
        sender.start()

        live: Optional[Live] = None
        if self.live_mode:
            live = stack.enter_context(Live(console=self.console, refresh_per_second=8, transient=False))
        self.event(
            f"streaming {RATE_PER_S} datagrams/s to 127.0.0.1:{SERVICE_PORT}",
            live,
        )

        raised = silenced = False
        silenced_at = 0.0
        expired_at: Optional[float] = None
        expiry_line = ""
        next_plain = PLAIN_EVERY_S
        previous = (0.0, packets)
        while True:
            now = time.monotonic() - self.t0
            weights, packets = self.kernel_packets()
            phase = phases[-1]

            if not raised and now >= RAISE_AT_S:
                phase.end_s, phase.end_packets = now, packets
                self.by_port(RAISED_PORT).command(f"weight {RAISED_WEIGHT}")
                self._wait_for(lambda: self.kernel_weights().get(RAISED_PORT) == RAISED_WEIGHT, 2, "the new weight")
                raised = True
                weights, packets = self.kernel_packets()
                now = time.monotonic() - self.t0
                title = f"gateway {RAISED_PORT} raised its weight to {RAISED_WEIGHT}"
                phases.append(Phase(2, title, weights, now, packets))
                self.event(
                    f"gateway {RAISED_PORT} sets gw.weight = {RAISED_WEIGHT} (a heartbeat sends it at once)", live
                )
            elif raised and not silenced and now >= SILENCE_AT_S:
                self.by_port(SILENT_PORT).command("silence")
                self.by_port(SILENT_PORT).state = "silent"
                silenced, silenced_at = True, now
                self.event(f"gateway {SILENT_PORT} stops heartbeating (and keeps receiving)", live)
            elif silenced and expired_at is None:
                if SILENT_PORT not in weights:
                    expired_at = now
                    # phase 2 ends with the last reading that still had the gateway: no packet of
                    # the new schedule is in it, and phase 3 starts with the first one without
                    phase.end_s, phase.end_packets = previous
                    self.by_port(SILENT_PORT).state = "expired"
                    phases.append(Phase(3, f"gateway {SILENT_PORT} expired", weights, now, packets))
                    expiry_line = (
                        f"expiry: gateway {SILENT_PORT} stopped heartbeating at {silenced_at:.1f} s and expired "
                        f"{now - silenced_at:.1f} s later "
                        f"(expiry time {EXPIRY_S:g} s, heartbeat every {HEARTBEAT_S:g} s)"
                    )
                    self.event(
                        f"gateway {SILENT_PORT} expired {now - silenced_at:.1f} s later; its share goes to the rest",
                        live,
                    )
                elif now - silenced_at > EXPIRY_TIMEOUT_S:
                    raise DemoSetupError(f"gateway {SILENT_PORT} did not expire within {EXPIRY_TIMEOUT_S:g} s")
            elif expired_at is not None and now >= expired_at + RUN_AFTER_EXPIRY_S:
                phases[-1].end_s, phases[-1].end_packets = now, packets
                break
            previous = (now, packets)

            frame = self.frame(now, phases[-1], weights, packets, sender.sent, raised, silenced, expired_at)
            if live is not None:
                live.update(render(frame, self.console.width))
            elif now >= next_plain:
                self.say(plain_line(frame))
                next_plain += PLAIN_EVERY_S
            time.sleep(TICK_S)

        sender.stop()
        if live is not None:
            final = self.frame(now, phases[-1], weights, packets, sender.sent, True, True, expired_at)
            live.update(render(final, self.console.width))
            live.stop()
        time.sleep(0.2)  # the last datagrams reach their sockets
        self._stop_gateways()
        received = sum(gw.final or 0 for gw in self.gateways)
        return Outcome(phases, expiry_line, sender.sent, received)

    def by_port(self, port: int) -> GatewayProcess:
        return next(gw for gw in self.gateways if gw.port == port)

    def frame(
        self,
        now: float,
        phase: Phase,
        weights: dict[int, int],
        packets: dict[int, int],
        sent: int,
        raised: bool,
        silenced: bool,
        expired_at: Optional[float],
    ) -> Frame:
        shares, balanced = phase.shares(packets)
        total_weight = sum(weights.values()) or 1
        rows = [
            Row(
                port=gw.port,
                state=gw.state,
                kernel_weight=weights.get(gw.port),
                target=weights[gw.port] / total_weight if gw.port in weights else None,
                share=shares.get(gw.port) if gw.port in weights and balanced else None,
                received=gw.received,
            )
            for gw in self.gateways
        ]
        if not raised:
            upcoming = f"gateway {RAISED_PORT} raises its weight to {RAISED_WEIGHT} at {RAISE_AT_S:g} s"
        elif not silenced:
            upcoming = f"gateway {SILENT_PORT} stops heartbeating at {SILENCE_AT_S:g} s"
        elif expired_at is None:
            upcoming = f"gateway {SILENT_PORT} expires once {EXPIRY_S:g} s pass without a heartbeat"
        else:
            upcoming = f"the demo ends at {expired_at + RUN_AFTER_EXPIRY_S:.0f} s and cleans up"
        headline = f"namespace {self.name} · lo · service port {SERVICE_PORT} · expiry {EXPIRY_S:g} s"
        return Frame(now, headline, phase, rows, sent, self.events, upcoming)


class CleanupStack(contextlib.ExitStack):
    """Unwinds with Ctrl-C and termination ignored, so a second Ctrl-C cannot cut cleanup short."""

    def __exit__(self, *exc: Any) -> bool:
        handlers = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            return bool(super().__exit__(*exc))
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)


def left_behind(demo: Demo) -> list[str]:
    """What the demo created and is still there: must be nothing."""
    left = []
    if os.path.exists(f"/run/netns/{demo.name}"):
        left.append(f"namespace {demo.name}")
    if os.path.exists(demo.pin_path):
        left.append(demo.pin_path)
    left += [f"process {gw.proc.pid}" for gw in demo.gateways if gw.proc.poll() is None]
    return left


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ebpflb.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--plain", action="store_true", help="plain lines even in a terminal")
    args = parser.parse_args(argv)
    console = Console(soft_wrap=True)  # piped output keeps one record per line
    demo = Demo(console, live=console.is_terminal and not args.plain)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)  # cleanup runs for these too

    outcome: Optional[Outcome] = None
    code = 0
    try:
        with CleanupStack() as stack:
            demo.setup(stack)
            outcome = demo.run(stack)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: the demo removed what it had created")
        code = 130
    except (DemoSetupError, EbpflbError, OSError) as e:
        console.print(f"[red]demo failed:[/red] {e}", highlight=False)
        code = 1

    left = left_behind(demo)
    demo.cleanup_log.append("left behind: " + (", ".join(left) if left else "nothing"))
    if outcome is not None:
        print_summary(console, outcome.phases, outcome.expiry_line, outcome.sent, outcome.received, demo.cleanup_log)
    else:
        for line in demo.cleanup_log:
            console.print(f"cleanup: {line}", highlight=False)
    return code


if __name__ == "__main__":
    sys.exit(main())
