"""Reply NAT attachments: the object's tc program at the egress of every interface the XDP
program runs on, each a BPF link (tcx) pinned in the instance's directory. A pinned link keeps
the attachment after the loader exits and needs no qdisc; removing the pin detaches it."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Optional

from ebpflb.bpf import libbpf
from ebpflb.errors import EbpflbError

LINK_PREFIX = "reply_nat_if"  # + ifindex


def link_pins(pin_path: str) -> set[str]:
    """Names of the reply NAT links pinned in the directory."""
    try:
        return {name for name in os.listdir(pin_path) if name.startswith(LINK_PREFIX)}
    except OSError:
        return set()


def sync_reply_nat(pin_path: str, prog_fd: Optional[int], ifindexes: list[int]) -> None:
    """Makes the pinned links match: prog_fd at egress of each of ifindexes (an existing link
    gets the new program atomically), or, with prog_fd None, no link at all. On failure the
    links this call created are removed again."""
    wanted = {f"{LINK_PREFIX}{i}": i for i in ifindexes} if prog_fd is not None else {}
    created: list[str] = []
    try:
        for name, ifindex in sorted(wanted.items()):
            path = os.path.join(pin_path, name)
            assert prog_fd is not None
            if os.path.exists(path) and _updated(path, prog_fd):
                continue
            fd = _attach(ifindex, prog_fd)
            try:
                libbpf.obj_pin(fd, path)
                created.append(path)
            finally:
                os.close(fd)
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    for name in link_pins(pin_path) - set(wanted):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(pin_path, name))


def _updated(path: str, prog_fd: int) -> bool:
    """Gives a pinned link the new program; False (and the pin removed) if the link was severed
    (its interface is gone: a stale pin)."""
    fd = libbpf.obj_get(path)
    try:
        libbpf.link_update(fd, prog_fd)
        return True
    except OSError as e:
        if e.errno != errno.ENOLINK:
            raise
        os.unlink(path)
        return False
    finally:
        os.close(fd)


def _attach(ifindex: int, prog_fd: int) -> int:
    try:
        return libbpf.tcx_egress_link(ifindex, prog_fd)
    except OSError as e:
        raise EbpflbError(
            f"could not attach reply NAT at egress of interface {ifindex}: {e.strerror} "
            "(it needs tcx, Linux 6.6 or later): use --no-reply-nat"
        ) from None
