"""Control operations: the kernel's control program run with BPF_PROG_TEST_RUN, and what
each of its refusals means."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from ebpflb.bpf import libbpf
from ebpflb.bpf.layout import MAX_GATEWAYS, CtlArgs, CtlOp, RejectReason
from ebpflb.bpf.object_file import CONTROL_PROGRAM, object_path
from ebpflb.dataplane.loading import load_object
from ebpflb.errors import EbpflbError

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


def run_control(pin_path: str, op: CtlOp, port: int = 0, weight: int = 0, **fields: object) -> None:
    """One operation against the pinned state; an EbpflbError says why it was refused."""
    if not 0 <= port <= 65535:
        raise EbpflbError(f"port {port} is out of range: use 1-65535")
    if not 0 <= weight <= 0xFFFFFFFF:
        raise EbpflbError(f"weight {weight} is out of range: use 0-65535")
    args = CtlArgs(op=op, port=port, weight=weight)
    for name, value in fields.items():
        setattr(args, name, value)
    with control_fd(pin_path) as fd:
        ret = libbpf.run_syscall(fd, args)
    if ret < 0:
        raise EbpflbError(REJECT_TEXT.get(RejectReason(-ret - 1), f"rejected ({ret})"))


@contextlib.contextmanager
def control_fd(pin_path: str) -> Iterator[int]:
    """The pinned control program. An instance loaded by xdp-loader pins none: the shipped
    object is then loaded once over the same pins to run it (with its compiled-in defaults)."""
    try:
        fd = libbpf.obj_get(os.path.join(pin_path, CONTROL_PROGRAM))
    except OSError:
        with libbpf.BpfObject(str(object_path()), pin_root=pin_path) as obj:
            load_object(obj, pin_path)
            yield obj.program_fd(CONTROL_PROGRAM)
        return
    try:
        yield fd
    finally:
        os.close(fd)
