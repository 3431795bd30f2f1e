"""Foreground mode (`ebpflb run`, alias `ebpflb_udp_wrr`): attaches like `load`, shows a live
status, serves user-space registrations (-u), sweeps expired gateways on time, and detaches and
removes its pins on Ctrl-C or SIGTERM.

While it runs it holds an exclusive flock on /run/ebpflb/<pin path>.lock (bpffs cannot hold
regular files), which names its pid; `load`, `unload` and a second `run` check it. If the process
dies without cleaning up, the dataplane keeps balancing, and the next `run` adopts the state."""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import libbpf
from .errors import EbpflbError
from .instance import Attachment, GatewayInfo, Instance, Snapshot
from .layout import CtlArgs, CtlOp, LbConfig, RejectReason
from .object_file import CONTROL_PROGRAM, PINNED_MAPS, XDP_PROGRAM
from .system import LOOPBACK_IFINDEX, ifindex_of, ifname_of, require_bpffs, require_root
from .userspace_reg import RegistrationServer, apply

LOCK_DIR = "/run/ebpflb"
TICK_S = 0.5  # sweep and status refresh period
SUMMARY_EVERY_S = 5.0  # plain output: counters line at most this often, and only when they moved
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# ---------------------------------------------------------------- the run lock


def lock_path(pin_path: str) -> str:
    """/run/ebpflb/<pin path, percent-escaped>.lock: one lock per pin directory."""
    return os.path.join(LOCK_DIR, urllib.parse.quote(os.path.normpath(os.path.abspath(pin_path)), safe="") + ".lock")


@dataclass
class Owner:
    pid: int
    pin_path: str


def _read_owner(fd: int) -> Owner:
    """The lock file holds "<pid>\\n<pin path>\\n"."""
    text = os.pread(fd, 4096, 0).decode(errors="replace").split("\n")
    pid = int(text[0]) if text and text[0].strip().isdigit() else 0
    return Owner(pid, text[1] if len(text) > 1 else "")


def _held_owner(path: str) -> Optional[Owner]:
    """The owner recorded in a lock file if a live process holds its lock, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(fd)
        return None  # left by a killed run: nobody holds it
    finally:
        os.close(fd)


def running_owner(pin_path: str) -> Optional[Owner]:
    """The live `ebpflb run` process owning pin_path, if any."""
    return _held_owner(lock_path(pin_path))


def program_owner(prog_id: int) -> Optional[Owner]:
    """The live `ebpflb run` process whose XDP program has this id, if any."""
    with contextlib.suppress(OSError):
        for name in os.listdir(LOCK_DIR):
            owner = _held_owner(os.path.join(LOCK_DIR, name)) if name.endswith(".lock") else None
            if owner and owner.pin_path:
                with contextlib.suppress(OSError):
                    fd = libbpf.obj_get(os.path.join(owner.pin_path, XDP_PROGRAM))
                    try:
                        if libbpf.prog_id(fd) == prog_id:
                            return owner
                    finally:
                        os.close(fd)
    return None


def owned_message(owner: Owner, pin_path: str) -> str:
    return (
        f"ebpflb run (pid {owner.pid}) owns {pin_path}: stop it first "
        f"(Ctrl-C in its terminal, or `kill {owner.pid}`); it detaches and removes the pins"
    )


def refuse_if_owned(pin_path: str, ifnames: Optional[list[str]] = None) -> None:
    """One clear error if a live `run` owns the pin path or runs on one of the interfaces."""
    owner = running_owner(pin_path)
    if owner:
        raise EbpflbError(owned_message(owner, os.path.normpath(os.path.abspath(pin_path))))
    for name in dict.fromkeys([*ifnames, ifname_of(LOOPBACK_IFINDEX)] if ifnames is not None else []):
        index = ifindex_of(name)
        for flag in (libbpf.XDP_FLAGS_SKB_MODE, libbpf.XDP_FLAGS_DRV_MODE):
            try:
                prog_id = libbpf.xdp_query_id(index, flag)
            except OSError:
                continue
            other = program_owner(prog_id) if prog_id else None
            if other and other.pin_path != os.path.normpath(os.path.abspath(pin_path)):
                raise EbpflbError(
                    f"{name} is balanced by ebpflb run (pid {other.pid}) of {other.pin_path}: "
                    f"stop it first (`kill {other.pid}`)"
                )


class RunLock:
    """Exclusive for the lifetime of one `run`; the kernel releases it if the process dies."""

    def __init__(self, pin_path: str) -> None:
        self.pin_path = os.path.normpath(os.path.abspath(pin_path))
        self.path = lock_path(pin_path)
        self.fd: Optional[int] = None

    def acquire(self) -> None:
        deadline = time.monotonic() + 0.3  # a `load` may hold a shared lock for an instant while it checks
        while True:
            os.makedirs(LOCK_DIR, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # the directory was just removed by a run that ended
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                raise EbpflbError(owned_message(owner, self.pin_path)) from None
            if not self._still_linked(fd):  # its previous owner removed it after we opened it
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n{self.pin_path}\n".encode(), 0)
            self.fd = fd
            return

    def _still_linked(self, fd: int) -> bool:
        return _is_linked(fd, self.path)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still holding it, so nobody locks an unlinked file
        os.close(self.fd)
        self.fd = None
        with contextlib.suppress(OSError):
            os.rmdir(LOCK_DIR)  # only if no other run is using it


def _is_linked(fd: int, path: str) -> bool:
    """Whether path still names the file open at fd."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def remove_stale_lock(pin_path: str) -> None:
    """Removes the lock file a killed `run` of pin_path left behind; never one a live process holds."""
    path = lock_path(pin_path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a live run (or a command checking it) holds it
        if _is_linked(fd, path):  # not replaced by a new run's file since we opened it
            with contextlib.suppress(OSError):
                os.unlink(path)  # while holding it, as RunLock.release does
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(LOCK_DIR)  # only if no other run is using it


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


# ---------------------------------------------------------------- status views


def _where(attachments: list[Attachment]) -> str:
    return ", ".join(f"{a.ifname} ({a.mode})" for a in attachments) or "no interface"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}" if whole else "0.0"


def _rejected(snap: Snapshot) -> dict[str, int]:
    return {r.name.lower(): int(snap.counters.reg_rejected[r]) for r in RejectReason}


class View(Protocol):
    def update(self, snap: Snapshot, attachments: list[Attachment]) -> None: ...

    def close(self) -> None: ...


class PlainView:
    """Log lines for a pipe or a file: one per change, and a counters line every few seconds."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.previous: Optional[Snapshot] = None
        self.previous_where = ""
        self.summary_due = 0.0
        self.summarised: tuple[int, ...] = ()

    def say(self, text: str) -> None:
        self.console.print(f"{time.strftime('%H:%M:%S')} {text}", highlight=False, soft_wrap=True, markup=False)

    def update(self, snap: Snapshot, attachments: list[Attachment]) -> None:
        where = _where(attachments)
        if where != self.previous_where and self.previous is not None:
            self.say(f"attached to {where}")
        self.previous_where = where
        before = self.previous
        if before is not None:
            self._gateway_changes(before, snap)
            self._rejections(before, snap)
        self._summary(snap)
        self.previous = snap

    def _gateway_changes(self, before: Snapshot, now: Snapshot) -> None:
        old = {g.port: g for g in before.gateways}
        new = {g.port: g for g in now.gateways}
        for port, g in sorted(new.items()):
            if port not in old:
                kind = "static gateway" if g.is_static else "gateway"
                self.say(f"{kind} {port} registered with weight {g.weight} (slot {g.slot})")
            elif old[port].weight != g.weight:
                self.say(f"gateway {port} weight {old[port].weight} -> {g.weight}")
        gone = sorted((g for p, g in old.items() if p not in new), key=lambda g: -g.age_s)
        expired = now.counters.expired - before.counters.expired
        for i, g in enumerate(gone):  # expiry takes the stalest first
            self.say(f"gateway {g.port} {'expired' if i < expired else 'removed'}")

    def _rejections(self, before: Snapshot, now: Snapshot) -> None:
        old, new = _rejected(before), _rejected(now)
        for reason, count in new.items():
            if count > old[reason]:
                self.say(f"registrations rejected ({reason}): +{count - old[reason]}, {count} in all")

    def _summary(self, snap: Snapshot) -> None:
        c = snap.counters
        values = (len(snap.gateways), c.service, c.no_gateway_passed, c.no_gateway_dropped, c.reg_accepted, c.expired)
        if values == self.summarised or time.monotonic() < self.summary_due:
            return
        self.summarised = values
        self.summary_due = time.monotonic() + SUMMARY_EVERY_S
        shares = ", ".join(f"{g.port}: {g.packets}" for g in sorted(snap.gateways, key=lambda g: g.port))
        self.say(
            f"{len(snap.gateways)} gateway(s){' (' + shares + ')' if shares else ''}; "
            f"balanced {c.service}, without gateway {c.no_gateway_passed + c.no_gateway_dropped}, "
            f"registrations {c.reg_accepted} accepted / {sum(_rejected(snap).values())} rejected, "
            f"expired {c.expired}"
        )

    def close(self) -> None:
        pass


class LiveView:
    """A rich Live table for a terminal, redrawn every tick."""

    def __init__(self, console: Console, pin_path: str) -> None:
        self.pin_path = pin_path
        self.previous: Optional[Snapshot] = None
        self.previous_at = time.monotonic()
        self.live = Live(console=console, auto_refresh=False, transient=False)
        self.live.start()

    def update(self, snap: Snapshot, attachments: list[Attachment]) -> None:
        now = time.monotonic()
        elapsed = max(now - self.previous_at, 1e-3)
        before = {g.port: g.packets for g in self.previous.gateways} if self.previous else {}
        self.previous, self.previous_at = snap, now
        self.live.update(self._render(snap, attachments, before, elapsed), refresh=True)

    def _render(self, snap: Snapshot, attachments: list[Attachment], before: dict[int, int], elapsed: float) -> Group:
        cfg, c = snap.state.config, snap.counters
        head = Text.from_markup(
            f"[bold]ebpflb run[/bold] on {_where(attachments)} · service port {cfg.service_port} · "
            f"registrations on {cfg.reg_port} ({'user space' if cfg.userspace_reg else 'kernel'}) · "
            f"expiry {cfg.expiry_ns / 1e9:g} s · trace {'on' if cfg.trace else 'off'} · Ctrl-C stops"
        )
        table = Table("port", "weight", "weight %", "packets", "packet %", "pkt/s", "bytes", "age s", box=None)
        gateways: list[GatewayInfo] = sorted(snap.gateways, key=lambda g: g.port)
        total_weight = sum(g.weight for g in gateways)
        total_packets = sum(g.packets for g in gateways)
        for g in gateways:
            rate = (g.packets - before.get(g.port, g.packets)) / elapsed
            table.add_row(
                str(g.port),
                str(g.weight),
                _pct(g.weight, total_weight),
                str(g.packets),
                _pct(g.packets, total_packets),
                f"{rate:.0f}",
                str(g.bytes),
                "static" if g.is_static else f"{g.age_s:.1f}",
            )
        rejected = ", ".join(f"{k} {v}" for k, v in _rejected(snap).items() if v) or "none"
        foot = Text(
            f"{len(gateways)} gateway(s) · balanced {c.service} · without gateway "
            f"{c.no_gateway_passed + c.no_gateway_dropped} · registrations {c.reg_accepted} accepted, "
            f"rejected: {rejected} · expired {c.expired} · pins in {self.pin_path}"
        )
        return Group(head, table if gateways else Text("no gateways registered", style="yellow"), foot)

    def close(self) -> None:
        self.live.stop()


# ---------------------------------------------------------------- the foreground process


@contextlib.contextmanager
def _held_fd(path: str) -> Iterator[int]:
    fd = libbpf.obj_get(path)
    try:
        yield fd
    finally:
        os.close(fd)


def run_foreground(pin_path: str, ifnames: list[str], config: LbConfig, mode: str, console: Console) -> None:
    """Runs until a stop signal; raises EbpflbError (having changed nothing) if it cannot start."""
    require_root()
    require_bpffs(pin_path)
    stop = StopSignals()
    try:
        lock = RunLock(pin_path)
        lock.acquire()
        try:
            _attach_and_serve(Instance(pin_path), ifnames, config, mode, console, stop)
        finally:
            lock.release()
    finally:
        stop.restore()


def _attach_and_serve(
    instance: Instance, ifnames: list[str], config: LbConfig, mode: str, console: Console, stop: StopSignals
) -> None:
    def say(text: str) -> None:
        console.print(f"ebpflb run: {text}", highlight=False, soft_wrap=True, markup=False)

    server = RegistrationServer(config.reg_port) if config.userspace_reg else None
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
        say(
            f"balancing UDP port {config.service_port} on {_where(attached)}; registrations on port "
            f"{config.reg_port} ({'user space' if server else 'kernel'}), expiry {config.expiry_ns / 1e9:g} s, "
            f"trace {'on' if config.trace else 'off'}; pins in {instance.pin_path}; Ctrl-C stops"
        )
        try:
            _serve(instance, server, console, stop)
        finally:
            _detach(instance, say)
    finally:
        if server:
            server.close()
    if stop.received is not None:
        say(f"stopped by {signal.Signals(stop.received).name}")


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
