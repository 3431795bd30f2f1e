"""What the shipped object needs from the kernel, probed with libbpf once per process, so that
an old kernel gets one line naming the missing feature instead of a verifier log."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

from ebpflb.bpf import libbpf
from ebpflb.errors import EbpflbError

# uapi linux/bpf.h (checked against vmlinux.h)
BPF_PROG_TYPE_XDP = 6
BPF_PROG_TYPE_SYSCALL = 31
BPF_FUNC_LOOP = 181
BPF_FUNC_MAP_LOOKUP_PERCPU_ELEM = 195


@dataclass(frozen=True)
class Feature:
    name: str
    since: tuple[int, int]  # the first Linux release that has it
    probe: Callable[[], int]  # 1: present, 0: missing


FEATURES = (
    Feature("syscall programs (BPF_PROG_TYPE_SYSCALL)", (5, 14), lambda: libbpf.probe_prog_type(BPF_PROG_TYPE_SYSCALL)),
    Feature("bpf_loop", (5, 17), lambda: libbpf.probe_helper(BPF_PROG_TYPE_XDP, BPF_FUNC_LOOP)),
    Feature(
        "bpf_map_lookup_percpu_elem",
        (5, 19),
        lambda: libbpf.probe_helper(BPF_PROG_TYPE_XDP, BPF_FUNC_MAP_LOOKUP_PERCPU_ELEM),
    ),
)


@functools.cache
def missing() -> tuple[Feature, ...]:
    """The features this kernel lacks. If it loads no program at all (no privilege), nothing can
    be told apart and nothing is reported: the load itself then says what is wrong."""
    try:
        if libbpf.probe_prog_type(BPF_PROG_TYPE_XDP) != 1:
            return ()
        return tuple(f for f in FEATURES if f.probe() == 0)
    except OSError:  # libbpf could not ask: same as above
        return ()


# The reply NAT program's kfunc (Linux 6.2; the program is attached with tcx, 6.6, anyway).
REPLY_NAT_KFUNC = "bpf_cast_to_kern_ctx"


@functools.cache
def reply_nat_loadable() -> bool:
    """Whether the kernel can load the reply NAT program; the rest of the object loads without it."""
    try:
        return libbpf.kernel_has_function(REPLY_NAT_KFUNC)
    except OSError:
        return False


def require_kernel_features() -> None:
    gone = missing()
    if gone:
        needed = ".".join(str(n) for n in max(f.since for f in gone))
        raise EbpflbError(
            f"this kernel lacks {' and '.join(f.name for f in gone)} "
            f"(needs Linux {needed} or newer; running {os.uname().release})"
        )
