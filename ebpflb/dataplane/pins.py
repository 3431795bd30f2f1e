"""The pin directory on bpffs: where an instance lives, its lock, and which pins are there."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Iterator

from ebpflb.bpf import libbpf
from ebpflb.bpf.object_file import CONTROL_PROGRAM, PINNED_MAPS, XDP_PROGRAM
from ebpflb.dataplane import reply_nat
from ebpflb.dataplane.host import current_netns, initial_netns
from ebpflb.errors import EbpflbError

DEFAULT_PIN_PATH = "/sys/fs/bpf/ebpflb"
ALL_PINS = (XDP_PROGRAM, CONTROL_PROGRAM, *PINNED_MAPS)
LOCK_WAIT_S = 10.0  # how long a second load or unload waits for the first


def default_pin_path() -> str:
    """One instance per network namespace: the initial one keeps the historic path, any
    other gets its own, so namespaces never share a table by accident."""
    here = current_netns()
    return DEFAULT_PIN_PATH if here == initial_netns() or not initial_netns() else f"{DEFAULT_PIN_PATH}-net{here}"


def existing_pins(pin_path: str) -> set[str]:
    fixed = {name for name in ALL_PINS if os.path.exists(os.path.join(pin_path, name))}
    return fixed | reply_nat.link_pins(pin_path)


def pin_programs(obj: libbpf.BpfObject, pin_path: str) -> None:
    for prog in (XDP_PROGRAM, CONTROL_PROGRAM):
        path = os.path.join(pin_path, prog)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by an instance whose interfaces are gone, or replaced
        try:
            obj.pin_program(prog, path)
        except OSError as e:
            raise EbpflbError(f"could not pin the programs in {pin_path}: {e.strerror}") from None


def remove_pins(pin_path: str, keep: frozenset[str] | set[str] = frozenset()) -> None:
    """Removes the pins (but those in `keep`) and the directory if that leaves it empty.
    Removing a reply NAT link's pin detaches it."""
    for name in (*ALL_PINS, *sorted(reply_nat.link_pins(pin_path))):
        if name not in keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(pin_path, name))
    with contextlib.suppress(OSError):
        os.rmdir(pin_path)


def map_fd(pin_path: str, name: str) -> int:
    path = os.path.join(pin_path, name)
    try:
        return libbpf.obj_get(path)
    except OSError as e:
        raise EbpflbError(f"cannot open {path}: {e.strerror}; is ebpflb loaded there?") from None


@contextlib.contextmanager
def locked(pin_path: str, create: bool) -> Iterator[None]:
    """Serialises load, take-over and unload of one pin directory across processes. A
    second command waits for the first (up to LOCK_WAIT_S), then sees what it left."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        if create:
            try:
                os.makedirs(pin_path, exist_ok=True)
            except OSError as e:
                raise EbpflbError(f"cannot create {pin_path}: {e.strerror}") from None
        try:
            fd = os.open(pin_path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            if create:
                continue  # removed by an unload between makedirs and open
            raise EbpflbError(f"nothing is loaded at {pin_path}") from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise EbpflbError(
                            f"another ebpflb command has been loading or unloading {pin_path} "
                            f"for {LOCK_WAIT_S:g} s: retry when it is done"
                        ) from None
                    time.sleep(0.01)
            # the holder may have removed the directory: lock the one that is there now
            if _same_file(fd, pin_path):
                try:
                    yield
                except BaseException:
                    if create:  # cut short before the body's own clean-up began: no empty directory left
                        with contextlib.suppress(OSError):
                            os.rmdir(pin_path)
                    raise
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
