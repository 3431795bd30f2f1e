"""Foreground mode (`ebpflb run`, alias `ebpflb_udp_wrr`): attaches like `load`, shows a live
status, serves user-space registrations (-u), sweeps expired gateways on time, and detaches and
removes its pins on Ctrl-C or SIGTERM.

While it runs it holds an exclusive flock on /run/ebpflb/<pin path>.lock (bpffs cannot hold
regular files), which names its pid; `load`, `unload` and a second `run` check it. If the process
dies without cleaning up, the dataplane keeps balancing, and the next `run` adopts the state."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from rich.console import Console

from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import CtlArgs, CtlOp, LbConfig
from ebpflb.bpf.object_file import CONTROL_PROGRAM, PINNED_MAPS
from ebpflb.cli.run_lock import RunLock
from ebpflb.cli.run_views import LiveView, PlainView, View, where_attached
from ebpflb.cli.sd_notify import sd_notify
from ebpflb.dataplane import Instance
from ebpflb.dataplane.host import require_bpffs, require_root
from ebpflb.dataplane.userspace_registrations import RegistrationServer, apply
from ebpflb.metrics.exporter import MetricsServer

TICK_S = 0.5  # sweep and status refresh period
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# ---------------------------------------------------------------- signals


class StopSignals:
    """Turns SIGINT, SIGTERM and SIGHUP into a flag plus a readable fd, so no operation is cut
    in half: the main loop notices within one select() and cleans up."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.received: Optional[int] = None
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        self._previous_wakeup = signal.set_wakeup_fd(self.write_fd)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.received = signum

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.read_fd, 512):
                pass

    def restore(self) -> None:
        signal.set_wakeup_fd(self._previous_wakeup)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self.read_fd)
        os.close(self.write_fd)


@contextlib.contextmanager
def _held_fd(path: str) -> Iterator[int]:
    fd = libbpf.obj_get(path)
    try:
        yield fd
    finally:
        os.close(fd)


@dataclass
class ForegroundExtras:
    """What `run` does beyond attaching: all optional."""

    gateways: list[tuple[int, int]] = field(default_factory=list)  # static (port, weight) to add at start
    metrics_listen: Optional[str] = None  # HOST:PORT to serve /metrics on
    keep_loaded: bool = False  # on exit leave the dataplane attached and pinned, for the next run to adopt


def run_foreground(
    pin_path: str,
    ifnames: list[str],
    config: LbConfig,
    mode: str,
    console: Console,
    extras: Optional[ForegroundExtras] = None,
) -> None:
    """Runs until a stop signal; raises EbpflbError (having changed nothing) if it cannot start."""
    require_root()
    require_bpffs(pin_path)
    stop = StopSignals()
    try:
        lock = RunLock(pin_path)
        lock.acquire()
        try:
            _attach_and_serve(Instance(pin_path), ifnames, config, mode, console, stop, extras or ForegroundExtras())
        finally:
            lock.release()
    finally:
        stop.restore()


def _attach_and_serve(
    instance: Instance,
    ifnames: list[str],
    config: LbConfig,
    mode: str,
    console: Console,
    stop: StopSignals,
    extras: ForegroundExtras,
) -> None:
    def say(text: str) -> None:
        console.print(f"ebpflb run: {text}", highlight=False, soft_wrap=True, markup=False)

    server = RegistrationServer(config.reg_port) if config.userspace_reg else None
    metrics: Optional[MetricsServer] = None
    try:
        if instance.attachments():  # attached, yet no run holds the lock: its owner is gone
            attached, replaced = instance.take_over(ifnames, config, mode)
            snap = instance.snapshot(sweep=False)
            say(
                f"adopted the running instance at {instance.pin_path} ({len(snap.gateways)} gateway(s), "
                f"{snap.counters.service} datagrams balanced so far); "
                + ("replaced its program for the new configuration" if replaced else "kept its program")
            )
        else:
            attached = instance.load(ifnames, config, mode)
        try:
            for port, weight in extras.gateways:
                instance.control(CtlOp.ADD_STATIC, port, weight)
            if extras.metrics_listen:
                metrics = MetricsServer(instance.pin_path, extras.metrics_listen, say)
            say(
                f"balancing UDP port {config.service_port} on {where_attached(attached)}; registrations on port "
                f"{config.reg_port} ({'user space' if server else 'kernel'}), expiry {config.expiry_ns / 1e9:g} s, "
                f"trace {'on' if config.trace else 'off'}; pins in {instance.pin_path}"
                + (f"; {len(extras.gateways)} static gateway(s) from the config" if extras.gateways else "")
                + (f"; metrics at http://{_shown(metrics.address)}/metrics" if metrics else "")
                + "; Ctrl-C stops"
            )
            sd_notify("READY=1")
            _serve(instance, server, console, stop)
        finally:
            sd_notify("STOPPING=1")
            if metrics:
                metrics.close()
            if extras.keep_loaded:
                say(f"left loaded at {instance.pin_path}: the next `ebpflb run` adopts it, `ebpflb unload` removes it")
            else:
                _detach(instance, say)
    finally:
        if server:
            server.close()
    if stop.received is not None:
        say(f"stopped by {signal.Signals(stop.received).name}")


def _shown(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _detach(instance: Instance, say: Callable[[str], None]) -> None:
    if not os.path.exists(instance.pin(PINNED_MAPS[0])):
        say(f"{instance.pin_path} was already unloaded by someone else")
        return
    detached = instance.unload()
    say(f"detached from {', '.join(a.ifname for a in detached) or 'no interface'}; removed {instance.pin_path}")


def _serve(instance: Instance, server: Optional[RegistrationServer], console: Console, stop: StopSignals) -> None:
    view: View = LiveView(console, instance.pin_path) if console.is_terminal else PlainView(console)
    selector = selectors.DefaultSelector()
    selector.register(stop.read_fd, selectors.EVENT_READ, None)
    for fd, family in (server.fileno_map() if server else {}).items():
        selector.register(fd, selectors.EVENT_READ, family)
    try:
        with _held_fd(instance.pin(CONTROL_PROGRAM)) as control_fd:
            attachments = instance.attachments()
            next_tick = time.monotonic()
            while stop.received is None:
                for key, _ in selector.select(max(0.0, next_tick - time.monotonic())):
                    if key.data is None:
                        stop.drain()
                    elif server:
                        _register(server, key.data, control_fd, {a.ifindex for a in attachments})
                if stop.received is None and time.monotonic() >= next_tick:
                    libbpf.run_syscall(control_fd, CtlArgs(op=CtlOp.SWEEP))  # expiry on time without traffic
                    attachments = instance.attachments()
                    view.update(instance.snapshot(sweep=False), attachments)
                    next_tick = max(next_tick + TICK_S, time.monotonic())
    finally:
        selector.close()
        view.close()


def _register(server: RegistrationServer, family: int, control_fd: int, attached: set[int]) -> None:
    for registration in server.receive(family):
        # the XDP path sees only datagrams of devices it is attached to; so do we
        if registration.ifindex in attached:
            apply(control_fd, registration)
