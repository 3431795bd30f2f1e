"""The run lock: while `ebpflb run` runs it holds an exclusive flock on
/run/ebpflb/<pin path>.lock (bpffs cannot hold regular files), which names its pid; `load`,
`unload` and a second `run` check it. A killed run leaves the file, unlocked, behind."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import Optional

from ebpflb.bpf import libbpf
from ebpflb.bpf.object_file import XDP_PROGRAM
from ebpflb.dataplane.host import LOOPBACK_IFINDEX, ifindex_of, ifname_of
from ebpflb.errors import EbpflbError

LOCK_DIR = "/run/ebpflb"


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
