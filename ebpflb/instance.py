"""One ebpflb instance: the XDP program attached to interfaces and its state pinned in a
directory on bpffs. Every operation finds the live instance through its pins."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from . import libbpf, verifier_log
from .errors import EbpflbError
from .layout import (
    MAX_GATEWAYS,
    CpuData,
    CtlArgs,
    CtlOp,
    GatewayCounters,
    GlobalCounters,
    LbConfig,
    LbState,
    RejectReason,
)
from .object_file import CONFIG_SECTION, CONTROL_PROGRAM, PINNED_MAPS, XDP_PROGRAM, object_path
from .probes import require_kernel_features
from .system import (
    LOOPBACK_IFINDEX,
    current_netns,
    ifindex_of,
    ifname_of,
    initial_netns,
    interfaces,
    require_bpffs,
    require_root,
)

DEFAULT_PIN_PATH = "/sys/fs/bpf/ebpflb"
MODES = {"native": libbpf.XDP_FLAGS_DRV_MODE, "skb": libbpf.XDP_FLAGS_SKB_MODE}

REJECT_TEXT = {
    RejectReason.NOT_LOOPBACK: "registrations are accepted only from a loopback source on lo",
    RejectReason.SHORT_PAYLOAD: "a registration needs 4 payload bytes (weight, u32 big-endian)",
    RejectReason.WEIGHT_RANGE: "weight out of range (0-65535)",
    RejectReason.TABLE_FULL: f"the gateway table is full ({MAX_GATEWAYS} gateways)",
    RejectReason.MALFORMED: "malformed registration datagram",
    RejectReason.UNKNOWN_GATEWAY: "no gateway on that port: add it with `ebpflb gateways add PORT --weight W`",
    RejectReason.BAD_REQUEST: "invalid request (port must be 1-65535)",
    RejectReason.NOT_OWNER: "that gateway was registered from another source address",
    RejectReason.PORT_NOT_ALLOWED: "that port is outside the gateway ports of this instance (--gateway-ports)",
}
DEFAULT_GATEWAY_PORTS = (1024, 65535)
LOCK_WAIT_S = 10.0


@dataclass
class Attachment:
    ifname: str
    ifindex: int
    mode: str  # "native" or "skb"


@dataclass
class GatewayInfo:
    slot: int
    port: int
    weight: int
    is_static: bool
    age_s: float
    packets: int
    bytes: int


@dataclass
class Snapshot:
    """Everything `status` and `gateways` show, read at one moment."""

    state: LbState
    counters: GlobalCounters
    gateways: list[GatewayInfo]


def config_for(
    service_port: int,
    reg_port: int,
    expiry_s: float,
    trace: bool,
    userspace_reg: bool,
    drop_without_gateway: bool,
    gateway_ports: tuple[int, int] = DEFAULT_GATEWAY_PORTS,
    balance_forwarded: bool = False,
) -> LbConfig:
    for name, port in (("--port", service_port), ("--reg-port", reg_port)):
        if not 1 <= port <= 65535:
            raise EbpflbError(f"{name} {port} is not a UDP port: use 1-65535")
    if service_port == reg_port:
        raise EbpflbError("the service port and the registration port must differ")
    if not 0 < expiry_s <= 365 * 86400:
        raise EbpflbError(f"expiry {expiry_s} s is out of range: use more than 0 and at most a year")
    low, high = gateway_ports
    if not 1 <= low <= high <= 65535:
        raise EbpflbError(f"--gateway-ports {low}-{high} is not a port range: use LO-HI with 1 <= LO <= HI <= 65535")
    return LbConfig(
        service_port=service_port,
        reg_port=reg_port,
        gw_port_min=low,
        gw_port_max=high,
        expiry_ns=int(expiry_s * 1e9),
        trace=int(trace),
        userspace_reg=int(userspace_reg),
        drop_without_gateway=int(drop_without_gateway),
        balance_forwarded=int(balance_forwarded),
    )


def default_pin_path() -> str:
    """One instance per network namespace: the initial one keeps the historic path, any
    other gets its own, so namespaces never share a table by accident."""
    here = current_netns()
    return DEFAULT_PIN_PATH if here == initial_netns() or not initial_netns() else f"{DEFAULT_PIN_PATH}-net{here}"


class Instance:
    def __init__(self, pin_path: Optional[str] = None) -> None:
        self.pin_path = os.path.normpath(pin_path or default_pin_path())
        self._netns_checked = False

    def pin(self, name: str) -> str:
        return os.path.join(self.pin_path, name)

    # ---------------------------------------------------------------- lifecycle

    def load(self, ifnames: list[str], config: LbConfig, mode: str = "auto") -> list[Attachment]:
        """Loads the object over the pins (adopting existing state) and attaches it.

        Registrations arrive on lo, so lo is always attached too (generic mode). Everything is
        decided under the pin directory's lock; on any failure (also Ctrl-C) this call detaches
        what it attached and removes only the pins (and directory) it created."""
        require_root()
        require_bpffs(self.pin_path)
        targets = self._targets(ifnames)
        with self._locked(create=True):
            before = self._existing_pins()
            attached: list[Attachment] = []
            prog_id = 0
            try:
                self._refuse_if_busy(targets)
                obj = self._open_object(config)
                try:
                    prog_id = libbpf.prog_id(obj.program_fd(XDP_PROGRAM))
                    attached = self._attach_all(obj, targets, mode)
                    try:
                        self._pin_programs(obj)
                    except OSError as e:
                        raise EbpflbError(f"could not pin the programs in {self.pin_path}: {e.strerror}") from None
                finally:
                    obj.close()
                self.control(CtlOp.SWEEP)  # publishes the configuration for status
                self.claim_netns()
            except BaseException:
                with signals_deferred():  # a second Ctrl-C must not cut the clean-up short
                    self._detach_id(attached, prog_id)
                    self._remove_pins(keep=before)
                raise
        return attached

    def _refuse_if_busy(self, targets: list[tuple[int, str]]) -> None:
        """Another namespace's instance, one already attached here, or another XDP program."""
        self.check_netns()
        live = self.attachments()
        if live:
            where = ", ".join(a.ifname for a in live)
            raise EbpflbError(
                f"ebpflb is already loaded at {self.pin_path} (on {where}): "
                "run `ebpflb unload` first, or `ebpflb run` to take it over"
            )
        for index, name in targets:
            other = self._attached_id(index)
            if other:
                raise EbpflbError(
                    f"{name} already has another XDP program (id {other}): detach it first "
                    f"(`ip link set dev {name} xdp off`)"
                )

    def _existing_pins(self) -> set[str]:
        return {name for name in (XDP_PROGRAM, CONTROL_PROGRAM, *PINNED_MAPS) if os.path.exists(self.pin(name))}

    def _pin_programs(self, obj: libbpf.BpfObject) -> None:
        for prog in (XDP_PROGRAM, CONTROL_PROGRAM):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pin(prog))  # left by an instance whose interfaces are gone, or replaced
            obj.pin_program(prog, self.pin(prog))

    def take_over(self, ifnames: list[str], config: LbConfig, mode: str = "auto") -> tuple[list[Attachment], bool]:
        """Adopts a live instance whose owner is gone: gateways, weights and counters stay in the
        pinned maps. The running program is kept when configuration and interfaces are the same;
        otherwise a program loaded over the same maps atomically replaces it on every interface
        it runs on. Returns the attachments and whether the program was replaced."""
        require_root()
        require_bpffs(self.pin_path)
        targets = self._targets(ifnames)
        with self._locked(create=False):
            self.check_netns()
            live = {a.ifindex: a for a in self.attachments()}
            if not live:
                raise EbpflbError(f"nothing is attached at {self.pin_path}: load it instead")
            published = self.snapshot(sweep=False).state.config
            same_modes = all(mode in ("auto", a.mode) or a.ifindex == LOOPBACK_IFINDEX for a in live.values())
            if bytes(published) == bytes(config) and set(live) == {i for i, _ in targets} and same_modes:
                self.claim_netns()
                return sorted(live.values(), key=lambda a: a.ifindex), False
            for index, name in targets:
                other = self._attached_id(index)
                if other and index not in live:
                    raise EbpflbError(
                        f"{name} already has another XDP program (id {other}): detach it first "
                        f"(`ip link set dev {name} xdp off`)"
                    )
            obj = self._open_object(config)
            try:
                old_fd = libbpf.obj_get(self.pin(XDP_PROGRAM))
                try:
                    attached = self._replace_all(obj, old_fd, live, targets, mode)
                finally:
                    os.close(old_fd)
                try:
                    self._pin_programs(obj)
                except OSError as e:
                    raise EbpflbError(f"could not pin the programs in {self.pin_path}: {e.strerror}") from None
            finally:
                obj.close()
        self.control(CtlOp.SWEEP)  # publishes the new configuration
        self.claim_netns()
        return attached, True

    def _replace_all(
        self, obj: libbpf.BpfObject, old_fd: int, live: dict[int, Attachment], targets: list[tuple[int, str]], mode: str
    ) -> list[Attachment]:
        """Swaps old_fd's program for obj's where it runs (atomic per interface), attaches where it
        did not run, detaches from interfaces no longer named; on failure puts the old one back."""
        new_fd = obj.program_fd(XDP_PROGRAM)
        swapped: list[Attachment] = []
        added: list[Attachment] = []
        try:
            for index, name in targets:
                wanted = "skb" if index == LOOPBACK_IFINDEX else mode
                old = live.get(index)
                if old and wanted in ("auto", old.mode):
                    libbpf.xdp_attach(index, new_fd, MODES[old.mode], old_prog_fd=old_fd)
                    swapped.append(old)
                else:
                    if old:  # another mode was asked for: no atomic swap across modes
                        self._detach([old], old_fd)
                    added.append(self._attach(new_fd, index, name, wanted))
        except BaseException:
            self._detach(added, new_fd)
            for a in swapped:
                with contextlib.suppress(OSError):
                    libbpf.xdp_attach(a.ifindex, old_fd, MODES[a.mode], old_prog_fd=new_fd)
            raise
        wanted_indexes = {i for i, _ in targets}
        self._detach([a for i, a in live.items() if i not in wanted_indexes], old_fd)
        return sorted(swapped + added, key=lambda a: a.ifindex)

    def _remove_pins(self, keep: frozenset[str] | set[str] = frozenset()) -> None:
        """Removes the pins (but those in `keep`) and the directory if that leaves it empty."""
        for name in (XDP_PROGRAM, CONTROL_PROGRAM, *PINNED_MAPS):
            if name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.pin(name))
        with contextlib.suppress(OSError):
            os.rmdir(self.pin_path)

    def unload(self) -> list[Attachment]:
        """Detaches everything this instance attached and removes its pins."""
        require_root()
        if not os.path.exists(self.pin(PINNED_MAPS[0])):
            raise EbpflbError(f"nothing is loaded at {self.pin_path}: pass the --pin-path that `ebpflb load` used")
        with self._locked(create=False):
            self.check_netns()
            attached = self.attachments()
            if attached and os.path.exists(self.pin(XDP_PROGRAM)):
                fd = libbpf.obj_get(self.pin(XDP_PROGRAM))
                try:
                    self._detach(attached, fd)
                finally:
                    os.close(fd)
            elif attached:  # loaded by xdp-loader -p: found through the state map, not a program pin
                for a in attached:
                    with contextlib.suppress(OSError):
                        libbpf.xdp_detach(a.ifindex, MODES[a.mode])
            self._remove_pins()
        return attached

    def attachments(self) -> list[Attachment]:
        """Interfaces of this network namespace running this instance's program: the pinned
        program, or, for an instance loaded by another loader (xdp-loader -p DIR pins maps, not
        the program), any XDP program that uses this instance's state map."""
        is_ours = self._program_matcher()
        if is_ours is None:
            return []
        found = []
        for index, name in interfaces():
            for mode, flag in MODES.items():
                prog = self._query(index, flag)
                if prog and is_ours(prog):
                    found.append(Attachment(name, index, mode))
        return found

    def _program_matcher(self) -> Optional[Callable[[int], bool]]:
        try:
            fd = libbpf.obj_get(self.pin(XDP_PROGRAM))
        except OSError:
            try:
                fd = libbpf.obj_get(self.pin(PINNED_MAPS[0]))
            except OSError:
                return None
            try:
                state_id = libbpf.obj_id(fd)
            finally:
                os.close(fd)
            return lambda prog: _uses_map(prog, state_id)
        try:
            ours = libbpf.prog_id(fd)
        finally:
            os.close(fd)
        return lambda prog: prog == ours

    # ---------------------------------------------------------------- state

    def require_loaded(self) -> None:
        if not os.path.exists(self.pin(PINNED_MAPS[0])):
            raise EbpflbError(
                f"nothing is loaded at {self.pin_path}: run `ebpflb load IFACE` (or pass the --pin-path it used)"
            )

    def check_netns(self) -> None:
        """Refuses to act on an instance that serves another network namespace: its table,
        its interfaces and its pins are that namespace's. Every CLI command and every load,
        take-over and unload checks; reading the maps from elsewhere (tests) stays possible."""
        if self._netns_checked or os.geteuid() != 0 or not os.path.exists(self.pin(PINNED_MAPS[0])):
            # without root the command itself says root is needed; without pins, that nothing is loaded
            return
        served, here = self._read_state().netns, current_netns()
        if served and served != here:
            raise EbpflbError(
                f"the instance at {self.pin_path} serves another network namespace (net:[{served}]); this "
                f"command runs in net:[{here}]: run it there, or use this namespace's own pin path "
                f"({default_pin_path()} by default)"
            )
        self._netns_checked = True

    def claim_netns(self) -> None:
        """Records this network namespace as the one the instance serves (kept if already so)."""
        try:
            self.control(CtlOp.CLAIM_NETNS, netns=current_netns())
        except EbpflbError:
            self._netns_checked = False
            self.check_netns()  # says which namespace holds it
            raise

    def _read_state(self) -> LbState:
        state = LbState()
        fd = self._map_fd("lb_state")
        try:
            libbpf.map_lookup(fd, 0, state)
        finally:
            os.close(fd)
        return state

    def snapshot(self, sweep: bool = True) -> Snapshot:
        """Reads the table and counters; first expires stale gateways (the packet path only
        does that when traffic arrives), so an idle instance never lists an expired one."""
        self.require_loaded()
        if sweep:
            self.control(CtlOp.SWEEP)
        state = self._read_state()
        global_counters, per_slot = self._counters()
        now = time.monotonic_ns()
        gateways = [
            GatewayInfo(
                slot=slot,
                port=g.port,
                weight=g.weight,
                is_static=bool(g.is_static),
                age_s=max(0.0, (now - g.last_seen_ns) / 1e9),
                packets=per_slot[slot].packets,
                bytes=per_slot[slot].bytes,
            )
            for slot, g in enumerate(state.gw)
            if g.port
        ]
        return Snapshot(state, global_counters, gateways)

    def _counters(self) -> tuple[GlobalCounters, list[GatewayCounters]]:
        """Sums the per-CPU counters."""
        ncpu = libbpf.num_possible_cpus()
        stride = (ctypes.sizeof(CpuData) + 7) & ~7
        buf = (ctypes.c_char * (stride * ncpu))()
        fd = self._map_fd("lb_percpu")
        try:
            libbpf.map_lookup(fd, 0, buf)
        finally:
            os.close(fd)
        total = GlobalCounters()
        slots = [GatewayCounters() for _ in range(MAX_GATEWAYS)]
        for cpu in range(ncpu):
            data = CpuData.from_buffer(buf, cpu * stride)
            for name, *_ in GlobalCounters._fields_:
                mine = getattr(data.global_, name)
                if name == "reg_rejected":
                    for i in range(len(mine)):
                        total.reg_rejected[i] += mine[i]
                else:
                    setattr(total, name, getattr(total, name) + mine)
            for slot in range(MAX_GATEWAYS):
                slots[slot].packets += data.gw[slot].packets
                slots[slot].bytes += data.gw[slot].bytes
        return total, slots

    # ---------------------------------------------------------------- control

    def control(self, op: CtlOp, port: int = 0, weight: int = 0, **fields: object) -> None:
        """Runs one operation of the kernel's control program against the pinned state.

        An instance loaded by xdp-loader pins no control program: the shipped object is then
        loaded once over the same pins to run it (with its compiled-in defaults)."""
        require_root()
        self.require_loaded()
        if not 0 <= port <= 65535:
            raise EbpflbError(f"port {port} is out of range: use 1-65535")
        if not 0 <= weight <= 0xFFFFFFFF:
            raise EbpflbError(f"weight {weight} is out of range: use 0-65535")
        args = CtlArgs(op=op, port=port, weight=weight)
        for name, value in fields.items():
            setattr(args, name, value)
        with self._control_fd() as fd:
            ret = libbpf.run_syscall(fd, args)
        if ret < 0:
            raise EbpflbError(REJECT_TEXT.get(RejectReason(-ret - 1), f"rejected ({ret})"))

    @contextlib.contextmanager
    def _control_fd(self) -> Iterator[int]:
        try:
            fd = libbpf.obj_get(self.pin(CONTROL_PROGRAM))
        except OSError:
            with libbpf.BpfObject(str(object_path()), pin_root=self.pin_path) as obj:
                self._load_object(obj)
                yield obj.program_fd(CONTROL_PROGRAM)
            return
        try:
            yield fd
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- helpers

    def _targets(self, ifnames: list[str]) -> list[tuple[int, str]]:
        if not ifnames:
            raise EbpflbError("name at least one interface, e.g. `ebpflb load eth0`")
        targets: dict[int, str] = {}
        for name in ifnames:
            targets.setdefault(ifindex_of(name), name)
        targets.setdefault(LOOPBACK_IFINDEX, ifname_of(LOOPBACK_IFINDEX))
        return sorted(targets.items())

    def _open_object(self, config: LbConfig) -> libbpf.BpfObject:
        """Opens and loads the object. Signals wait until libbpf returns: a Ctrl-C inside its
        print callback would be lost (ctypes ignores exceptions there) and leave a traceback."""
        os.makedirs(self.pin_path, exist_ok=True)
        with signals_deferred():
            obj = libbpf.BpfObject(str(object_path()), pin_root=self.pin_path)
            try:
                section = obj.section(CONFIG_SECTION)
                ctypes.memmove(section, ctypes.addressof(config), ctypes.sizeof(config))
                self._load_object(obj)
            except BaseException:
                obj.close()
                raise
        return obj

    def _load_object(self, obj: libbpf.BpfObject) -> None:
        require_kernel_features()  # an old kernel: one line naming what it lacks, not a verifier log
        messages = libbpf.lib().log
        del messages[:]  # from here on, only this load's messages
        try:
            obj.load()
        except OSError as e:
            log = "\n".join(messages)
            if "couldn't reuse pinned map" in log or "not compatible" in log:
                raise EbpflbError(
                    f"the maps pinned in {self.pin_path} belong to another version of ebpflb: "
                    f"remove them with `ebpflb unload --pin-path {self.pin_path}`"
                ) from None
            refused = verifier_log.explain(messages)
            if refused:
                raise EbpflbError(f"loading the BPF object failed: {refused}") from None
            if e.errno == errno.EPERM:
                raise EbpflbError("the kernel refused to load the BPF program (EPERM): run as root") from None
            raise EbpflbError(f"loading the BPF object failed: {e.strerror}; libbpf said: {_last_line(log)}") from None

    def _attach_all(self, obj: libbpf.BpfObject, targets: list[tuple[int, str]], mode: str) -> list[Attachment]:
        """Attaches to every target or to none."""
        prog_fd = obj.program_fd(XDP_PROGRAM)
        attached: list[Attachment] = []
        try:
            for index, name in targets:
                attached.append(self._attach(prog_fd, index, name, "skb" if index == LOOPBACK_IFINDEX else mode))
        except BaseException:
            self._detach(attached, prog_fd)
            raise
        return attached

    def _attach(self, prog_fd: int, index: int, name: str, mode: str) -> Attachment:
        tries = ["native", "skb"] if mode == "auto" else [mode]
        error: Optional[OSError] = None
        for attempt in tries:
            try:
                libbpf.xdp_attach(index, prog_fd, MODES[attempt] | libbpf.XDP_FLAGS_UPDATE_IF_NOEXIST)
                return Attachment(name, index, attempt)
            except OSError as e:
                error = e
        assert error is not None
        hint = " (lo supports only --mode skb)" if index == LOOPBACK_IFINDEX else ""
        raise EbpflbError(f"could not attach XDP to {name} in {mode} mode: {error.strerror}{hint}") from None

    def _detach(self, attached: list[Attachment], prog_fd: int) -> None:
        self._detach_id(attached, libbpf.prog_id(prog_fd))

    def _detach_id(self, attached: list[Attachment], ours: int) -> None:
        for a in attached:
            if self._query(a.ifindex, MODES[a.mode]) == ours:  # never detach another program
                with contextlib.suppress(OSError):
                    libbpf.xdp_detach(a.ifindex, MODES[a.mode])

    def _attached_id(self, ifindex: int) -> int:
        return max(self._query(ifindex, flag) for flag in MODES.values())

    @staticmethod
    def _query(ifindex: int, flag: int) -> int:
        try:
            return libbpf.xdp_query_id(ifindex, flag)
        except OSError:
            return 0

    def _map_fd(self, name: str) -> int:
        try:
            return libbpf.obj_get(self.pin(name))
        except OSError as e:
            raise EbpflbError(f"cannot open {self.pin(name)}: {e.strerror}; is ebpflb loaded there?") from None

    @contextlib.contextmanager
    def _locked(self, create: bool) -> Iterator[None]:
        """Serialises load, take-over and unload of one pin directory across processes. A
        second command waits for the first (up to LOCK_WAIT_S), then sees what it left."""
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            if create:
                try:
                    os.makedirs(self.pin_path, exist_ok=True)
                except OSError as e:
                    raise EbpflbError(f"cannot create {self.pin_path}: {e.strerror}") from None
            try:
                fd = os.open(self.pin_path, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                if create:
                    continue  # removed by an unload between makedirs and open
                raise EbpflbError(f"nothing is loaded at {self.pin_path}") from None
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise EbpflbError(
                                f"another ebpflb command has been loading or unloading {self.pin_path} "
                                f"for {LOCK_WAIT_S:g} s: retry when it is done"
                            ) from None
                        time.sleep(0.01)
                # the holder may have removed the directory: lock the one that is there now
                if _same_file(fd, self.pin_path):
                    yield
                    return
            finally:
                os.close(fd)


def _same_file(fd: int, path: str) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Holds SIGINT, SIGTERM and SIGHUP for the block (delivered after it), in the main thread."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _uses_map(prog_id: int, map_id: int) -> bool:
    try:
        return map_id in libbpf.prog_map_ids(prog_id)
    except OSError:
        return False


def _last_line(log: str) -> str:
    lines = [line for line in log.splitlines() if line.strip()]
    return lines[-1] if lines else "nothing"
