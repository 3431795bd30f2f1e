"""One ebpflb instance: the XDP program attached to interfaces and its state pinned in a
directory on bpffs. Every operation finds the live instance through its pins. This class is
the facade: the work is in pins, attach, loading, state and control."""

from __future__ import annotations

import contextlib
import os
from typing import Optional

from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import CtlOp, LbConfig
from ebpflb.bpf.object_file import PINNED_MAPS, REPLY_NAT_PROGRAM, XDP_PROGRAM
from ebpflb.bpf.probes import reply_nat_loadable
from ebpflb.dataplane import attach, pins
from ebpflb.dataplane.attach import MODES, Attachment
from ebpflb.dataplane.control import run_control
from ebpflb.dataplane.host import LOOPBACK_IFINDEX, current_netns, require_bpffs, require_root
from ebpflb.dataplane.loading import open_object, signals_deferred
from ebpflb.dataplane.pins import default_pin_path
from ebpflb.dataplane.reply_nat import sync_reply_nat
from ebpflb.dataplane.state import Snapshot, read_snapshot, read_state
from ebpflb.errors import EbpflbError, IncompatiblePins


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
        targets = attach.targets_of(ifnames)
        with pins.locked(self.pin_path, create=True):
            before = pins.existing_pins(self.pin_path)
            attached: list[Attachment] = []
            prog_id = 0
            try:
                self._refuse_if_busy(targets)
                obj = open_object(self.pin_path, config)
                try:
                    prog_fd = obj.program_fd(XDP_PROGRAM)
                    prog_id = libbpf.prog_id(prog_fd)
                    attached = attach.attach_all(prog_fd, targets, mode)
                    _sync_reply_nat(self.pin_path, obj, config, targets)
                    pins.pin_programs(obj, self.pin_path)
                finally:
                    obj.close()
                self.control(CtlOp.SWEEP)  # publishes the configuration for status
                self.claim_netns()
            except BaseException:
                with signals_deferred():  # a second Ctrl-C must not cut the clean-up short
                    attach.detach_from(targets, prog_id)
                    pins.remove_pins(self.pin_path, keep=before)
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
            _refuse_other_program(index, name)

    def take_over(self, ifnames: list[str], config: LbConfig, mode: str = "auto") -> tuple[list[Attachment], bool]:
        """Adopts a live instance whose owner is gone: gateways, weights and counters stay in the
        pinned maps. The running program is kept when configuration and interfaces are the same;
        otherwise a program loaded over the same maps atomically replaces it on every interface
        it runs on. Returns the attachments and whether the program was replaced."""
        require_root()
        require_bpffs(self.pin_path)
        targets = attach.targets_of(ifnames)
        with pins.locked(self.pin_path, create=False):
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
                if index not in live:
                    _refuse_other_program(index, name)
            obj = open_object(self.pin_path, config)
            try:
                old_fd = libbpf.obj_get(self.pin(XDP_PROGRAM))
                try:
                    attached = attach.replace_all(obj.program_fd(XDP_PROGRAM), old_fd, live, targets, mode)
                finally:
                    os.close(old_fd)
                _sync_reply_nat(self.pin_path, obj, config, targets)
                pins.pin_programs(obj, self.pin_path)
            finally:
                obj.close()
        self.control(CtlOp.SWEEP)  # publishes the new configuration
        self.claim_netns()
        return attached, True

    def unload(self) -> list[Attachment]:
        """Detaches everything this instance attached and removes its pins."""
        require_root()
        if not os.path.exists(self.pin(PINNED_MAPS[0])):
            raise EbpflbError(f"nothing is loaded at {self.pin_path}: pass the --pin-path that `ebpflb load` used")
        with pins.locked(self.pin_path, create=False):
            with contextlib.suppress(IncompatiblePins):  # pins of another version: removing them is the way out
                self.check_netns()
            attached = self.attachments()
            if attached and os.path.exists(self.pin(XDP_PROGRAM)):
                fd = libbpf.obj_get(self.pin(XDP_PROGRAM))
                try:
                    attach.detach(attached, libbpf.prog_id(fd))
                finally:
                    os.close(fd)
            elif attached:  # loaded by xdp-loader -p: found through the state map, not a program pin
                for a in attached:
                    with contextlib.suppress(OSError):
                        libbpf.xdp_detach(a.ifindex, MODES[a.mode])
            pins.remove_pins(self.pin_path)
        return attached

    def attachments(self) -> list[Attachment]:
        return attach.attachments(self.pin_path)

    # ---------------------------------------------------------------- ownership

    def check_netns(self) -> None:
        """Refuses to act on an instance that serves another network namespace: its table,
        its interfaces and its pins are that namespace's. Every CLI command and every load,
        take-over and unload checks; reading the maps from elsewhere (tests) stays possible."""
        if self._netns_checked or os.geteuid() != 0 or not os.path.exists(self.pin(PINNED_MAPS[0])):
            # without root the command itself says root is needed; without pins, that nothing is loaded
            return
        served, here = read_state(self.pin_path).netns, current_netns()
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

    # ---------------------------------------------------------------- state and control

    def require_loaded(self) -> None:
        if not os.path.exists(self.pin(PINNED_MAPS[0])):
            raise EbpflbError(
                f"nothing is loaded at {self.pin_path}: run `ebpflb load IFACE` (or pass the --pin-path it used)"
            )

    def snapshot(self, sweep: bool = True) -> Snapshot:
        """Reads the table and counters; first expires stale gateways (the packet path only
        does that when traffic arrives), so an idle instance never lists an expired one."""
        self.require_loaded()
        if sweep:
            self.control(CtlOp.SWEEP)
        return read_snapshot(self.pin_path)

    def control(self, op: CtlOp, port: int = 0, weight: int = 0, **fields: object) -> None:
        """Runs one operation of the kernel's control program against the pinned state."""
        require_root()
        self.require_loaded()
        run_control(self.pin_path, op, port, weight, **fields)


def _sync_reply_nat(pin_path: str, obj: libbpf.BpfObject, config: LbConfig, targets: list[tuple[int, str]]) -> None:
    """Reply NAT at the egress of every interface the XDP program runs on, or nowhere."""
    if config.reply_nat and not reply_nat_loadable():
        raise EbpflbError(f"reply NAT needs tcx, Linux 6.6 or later (running {os.uname().release}): use --no-reply-nat")
    prog_fd = obj.program_fd(REPLY_NAT_PROGRAM) if config.reply_nat else None
    sync_reply_nat(pin_path, prog_fd, [index for index, _ in targets])


def _refuse_other_program(index: int, name: str) -> None:
    other = attach.attached_id(index)
    if other:
        raise EbpflbError(
            f"{name} already has another XDP program (id {other}): detach it first (`ip link set dev {name} xdp off`)"
        )
