"""XDP attachments: attach everywhere or nowhere, swap programs atomically, detach only our
own, and find where an instance runs."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Optional

from ebpflb.bpf import libbpf
from ebpflb.bpf.object_file import PINNED_MAPS, XDP_PROGRAM
from ebpflb.dataplane.host import LOOPBACK_IFINDEX, ifindex_of, ifname_of, interfaces
from ebpflb.errors import EbpflbError

MODES = {"native": libbpf.XDP_FLAGS_DRV_MODE, "skb": libbpf.XDP_FLAGS_SKB_MODE}


@dataclass
class Attachment:
    ifname: str
    ifindex: int
    mode: str  # "native" or "skb"


def targets_of(ifnames: list[str]) -> list[tuple[int, str]]:
    """(ifindex, name) of the named interfaces and lo, where registrations arrive."""
    if not ifnames:
        raise EbpflbError("name at least one interface, e.g. `ebpflb load eth0`")
    targets: dict[int, str] = {}
    for name in ifnames:
        targets.setdefault(ifindex_of(name), name)
    targets.setdefault(LOOPBACK_IFINDEX, ifname_of(LOOPBACK_IFINDEX))
    return sorted(targets.items())


def attach_all(prog_fd: int, targets: list[tuple[int, str]], mode: str) -> list[Attachment]:
    """Attaches to every target or to none (lo in generic mode: the only one it has)."""
    attached: list[Attachment] = []
    try:
        for index, name in targets:
            attached.append(attach(prog_fd, index, name, "skb" if index == LOOPBACK_IFINDEX else mode))
    except BaseException:
        detach_from(targets, libbpf.prog_id(prog_fd))
        raise
    return attached


def attach(prog_fd: int, index: int, name: str, mode: str) -> Attachment:
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


def detach_from(targets: list[tuple[int, str]], ours: int) -> None:
    """Detaches program id `ours` from the targets, in whichever mode it runs, as the kernel
    says: a signal that arrives during the attach call is raised when it returns, before the
    attachment is recorded, so a clean-up must not trust a list of what it attached."""
    if ours:  # 0: nothing was loaded, so nothing of ours can run
        detach([Attachment(name, index, mode) for index, name in targets for mode in MODES], ours)


def detach(attached: list[Attachment], ours: int) -> None:
    """Detaches program id `ours` where it runs; never another program."""
    for a in attached:
        if query(a.ifindex, MODES[a.mode]) == ours:
            with contextlib.suppress(OSError):
                libbpf.xdp_detach(a.ifindex, MODES[a.mode])


def replace_all(
    new_fd: int, old_fd: int, live: dict[int, Attachment], targets: list[tuple[int, str]], mode: str
) -> list[Attachment]:
    """Swaps old_fd's program for new_fd's where it runs (atomic per interface), attaches where
    it did not run, detaches from interfaces no longer named; on failure puts the old one back."""
    swapped: list[Attachment] = []
    added: list[Attachment] = []
    old_id = libbpf.prog_id(old_fd)
    try:
        for index, name in targets:
            wanted = "skb" if index == LOOPBACK_IFINDEX else mode
            old = live.get(index)
            if old and wanted in ("auto", old.mode):
                libbpf.xdp_attach(index, new_fd, MODES[old.mode], old_prog_fd=old_fd)
                swapped.append(old)
            else:
                if old:  # another mode was asked for: no atomic swap across modes
                    detach([old], old_id)
                added.append(attach(new_fd, index, name, wanted))
    except BaseException:
        # by what the kernel runs, not by what was recorded (see detach_from): swap the old
        # program back where the new one replaced it, detach the new one where it was added
        new_id = libbpf.prog_id(new_fd)
        for index, _ in targets:
            old = live.get(index)
            for mode, flag in MODES.items():
                if query(index, flag) != new_id:
                    continue
                with contextlib.suppress(OSError):
                    if old and old.mode == mode:
                        libbpf.xdp_attach(index, old_fd, flag, old_prog_fd=new_fd)
                    else:
                        libbpf.xdp_detach(index, flag)
        raise
    wanted_indexes = {i for i, _ in targets}
    detach([a for i, a in live.items() if i not in wanted_indexes], old_id)
    return sorted(swapped + added, key=lambda a: a.ifindex)


def attached_id(ifindex: int) -> int:
    """Id of any XDP program on the interface, 0 if none."""
    return max(query(ifindex, flag) for flag in MODES.values())


def query(ifindex: int, flag: int) -> int:
    try:
        return libbpf.xdp_query_id(ifindex, flag)
    except OSError:
        return 0


def attachments(pin_path: str) -> list[Attachment]:
    """Interfaces of this network namespace running the instance's program: the pinned
    program, or, for an instance loaded by another loader (xdp-loader -p DIR pins maps, not
    the program), any XDP program that uses the instance's state map."""
    is_ours = _program_matcher(pin_path)
    if is_ours is None:
        return []
    found = []
    for index, name in interfaces():
        for mode, flag in MODES.items():
            prog = query(index, flag)
            if prog and is_ours(prog):
                found.append(Attachment(name, index, mode))
    return found


def _program_matcher(pin_path: str) -> Optional[Callable[[int], bool]]:
    try:
        fd = libbpf.obj_get(os.path.join(pin_path, XDP_PROGRAM))
    except OSError:
        try:
            fd = libbpf.obj_get(os.path.join(pin_path, PINNED_MAPS[0]))
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


def _uses_map(prog_id: int, map_id: int) -> bool:
    try:
        return map_id in libbpf.prog_map_ids(prog_id)
    except OSError:
        return False
