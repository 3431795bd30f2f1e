"""Opening and loading the shipped object over a pin directory, with errors that say what
to do (an old kernel, pins of another version, the verifier's reason)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import threading
from typing import Iterator

from ebpflb.bpf import libbpf, verifier_log
from ebpflb.bpf.layout import LbConfig
from ebpflb.bpf.object_file import CONFIG_SECTION, REPLY_NAT_PROGRAM, object_path
from ebpflb.bpf.probes import reply_nat_loadable, require_kernel_features
from ebpflb.errors import EbpflbError


def open_object(pin_path: str, config: LbConfig) -> libbpf.BpfObject:
    """Opens and loads the object. Signals wait until libbpf returns: a Ctrl-C inside its
    print callback would be lost (ctypes ignores exceptions there) and leave a traceback."""
    os.makedirs(pin_path, exist_ok=True)
    with signals_deferred():
        obj = libbpf.BpfObject(str(object_path()), pin_root=pin_path)
        try:
            section = obj.section(CONFIG_SECTION)
            ctypes.memmove(section, ctypes.addressof(config), ctypes.sizeof(config))
            load_object(obj, pin_path)
        except BaseException:
            obj.close()
            raise
    return obj


def load_object(obj: libbpf.BpfObject, pin_path: str) -> None:
    require_kernel_features()  # an old kernel: one line naming what it lacks, not a verifier log
    if not reply_nat_loadable():
        obj.set_autoload(REPLY_NAT_PROGRAM, False)  # Linux < 6.2: the rest loads; reply NAT needs 6.6 (tcx)
    messages = libbpf.lib().log
    del messages[:]  # from here on, only this load's messages
    try:
        obj.load()
    except OSError as e:
        log = "\n".join(messages)
        if "couldn't reuse pinned map" in log or "not compatible" in log:
            raise EbpflbError(
                f"the maps pinned in {pin_path} belong to another version of ebpflb: "
                f"remove them with `ebpflb unload --pin-path {pin_path}`"
            ) from None
        refused = verifier_log.explain(messages)
        if refused:
            raise EbpflbError(f"loading the BPF object failed: {refused}") from None
        if e.errno == errno.EPERM:
            raise EbpflbError("the kernel refused to load the BPF program (EPERM): run as root") from None
        raise EbpflbError(f"loading the BPF object failed: {e.strerror}; libbpf said: {_last_line(log)}") from None


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


def _last_line(log: str) -> str:
    lines = [line for line in log.splitlines() if line.strip()]
    return lines[-1] if lines else "nothing"
