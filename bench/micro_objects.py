"""The benchmark-only BPF objects (bench/bpf/), loaded with ebpflb's own libbpf wrapper:
the XDP_PASS baseline, the replay harness, the parser alone and the two rejected designs."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path
from typing import Sequence

from ebpflb.bpf import libbpf

from .micro_packets import UDP_OFFSET, udp_fields

BENCH_MAX_GATEWAYS = 256
u16, u32, u64, s64 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int64


class ScanGateway(ctypes.Structure):
    _fields_ = [("port", u16), ("pad", u16), ("weight", u32), ("packets", u64)]


class ScanTable(ctypes.Structure):
    """struct scan_table of bench/bpf/scan_lowest.bpf.c."""

    _fields_ = [("n", u32), ("pad", u32), ("service", u64), ("gw", ScanGateway * BENCH_MAX_GATEWAYS)]


class SwrrGateway(ctypes.Structure):
    _fields_ = [("port", u16), ("pad", u16), ("weight", u32), ("current", s64), ("packets", u64)]


class SwrrTable(ctypes.Structure):
    """struct swrr_table of bench/bpf/locked_swrr.bpf.c (the bpf_spin_lock is a u32)."""

    _fields_ = [
        ("lock", u32),
        ("n", u32),
        ("total", u64),
        ("service", u64),
        ("gw", SwrrGateway * BENCH_MAX_GATEWAYS),
    ]


def load_object(path: Path, rodata: dict[str, bytes]) -> libbpf.BpfObject:
    """Opens, configures (read-only sections, before load) and loads one object."""
    obj = libbpf.BpfObject(str(path))
    try:
        for section_name, value in rodata.items():
            section = obj.section(section_name)
            if len(section) != len(value):
                raise RuntimeError(f"{path.name}: {section_name} is {len(section)} bytes, expected {len(value)}")
            ctypes.memmove(section, value, len(value))
        obj.load()
    except OSError as e:
        obj.close()
        log = "\n".join(libbpf.lib().log[-20:])
        raise RuntimeError(f"loading {path.name} failed: {e}\n{log}") from None
    except BaseException:
        obj.close()
        raise
    return obj


def update_map(fd: int, key: int, value: ctypes.Array | ctypes.Structure | ctypes.c_uint32) -> None:
    k = ctypes.c_uint32(key)
    libbpf.check(libbpf.lib().bpf_map_update_elem(fd, ctypes.byref(k), ctypes.byref(value), 0), "map update")


class ReplayHarness:
    """A replay program of bench/bpf (see replay.bpf.h), loaded with its configuration: it
    tail-calls whichever program was last set as its target."""

    def __init__(self, path: Path, program: str, config: bytes) -> None:
        self.obj = load_object(path, {".rodata.replay": config})
        self.fd = self.obj.program_fd(program)
        self._targets = self.obj.map_fd("replay_target")

    def target(self, prog_fd: int) -> None:
        update_map(self._targets, 0, ctypes.c_uint32(prog_fd))


class Replay(ReplayHarness):
    """The harness of the service path: restores the original destination port and checksum."""

    def __init__(self, path: Path, frame: bytes) -> None:
        # the original bytes as they sit in the frame, i.e. network byte order
        dest = frame[UDP_OFFSET + 2 : UDP_OFFSET + 4]
        check = frame[UDP_OFFSET + 6 : UDP_OFFSET + 8]
        super().__init__(path, "replay", struct.pack("<I", UDP_OFFSET) + dest + check)


class ReplayClients(ReplayHarness):
    """The harness of many clients (replay_clients.bpf.c): restores the destination port and
    gives each frame the next of `clients` source ports, checksum kept valid."""

    def __init__(self, path: Path, frame: bytes, clients: int) -> None:
        if not 1 <= clients <= 65536 - udp_fields(frame).source:
            raise ValueError(f"{clients} clients do not fit above source port {udp_fields(frame).source}")
        fields = frame[UDP_OFFSET + 2 : UDP_OFFSET + 4] + frame[UDP_OFFSET + 6 : UDP_OFFSET + 8]
        source = frame[UDP_OFFSET : UDP_OFFSET + 2]
        config = struct.pack("<I", UDP_OFFSET) + fields + source + struct.pack("<H", clients)
        super().__init__(path, "replay_clients", config)


class PerCpuTable:
    """A one-element per-CPU array: the same value is written for every CPU."""

    def __init__(self, fd: int, value_type: type[ctypes.Structure]) -> None:
        self.fd = fd
        self.value_type = value_type
        self.ncpu = libbpf.num_possible_cpus()
        self.stride = (ctypes.sizeof(value_type) + 7) & ~7

    def write(self, value: ctypes.Structure) -> None:
        buf = (ctypes.c_char * (self.stride * self.ncpu))()
        for cpu in range(self.ncpu):
            ctypes.memmove(ctypes.addressof(buf) + cpu * self.stride, ctypes.addressof(value), ctypes.sizeof(value))
        update_map(self.fd, 0, buf)

    def read(self) -> list[ctypes.Structure]:
        buf = (ctypes.c_char * (self.stride * self.ncpu))()
        libbpf.map_lookup(self.fd, 0, buf)
        return [self.value_type.from_buffer_copy(buf, cpu * self.stride) for cpu in range(self.ncpu)]


class ScanLowest:
    """Rejected design (a): O(N) lowest packets/weight scan over a per-CPU table."""

    def __init__(self, path: Path, service_port: int) -> None:
        self.obj = load_object(path, {".rodata.bench": struct.pack("<H", service_port)})
        self.fd = self.obj.program_fd("scan_lowest")
        self.table = PerCpuTable(self.obj.map_fd("scan_table"), ScanTable)

    def set_gateways(self, ports: Sequence[int], weights: Sequence[int]) -> None:
        """Fresh state on every CPU: packets 0."""
        value = ScanTable(n=len(ports))
        for i, (port, weight) in enumerate(zip(ports, weights)):
            value.gw[i] = ScanGateway(port=port, weight=weight)
        self.table.write(value)


class LockedSwrr:
    """Rejected design (b): nginx smooth WRR stepped per datagram under a bpf_spin_lock."""

    def __init__(self, path: Path, service_port: int) -> None:
        self.obj = load_object(path, {".rodata.bench": struct.pack("<H", service_port)})
        self.fd = self.obj.program_fd("locked_swrr")
        self._map = self.obj.map_fd("swrr_table")

    def set_gateways(self, ports: Sequence[int], weights: Sequence[int]) -> None:
        """Fresh state: current weights and packets 0."""
        value = SwrrTable(n=len(ports), total=sum(weights))
        for i, (port, weight) in enumerate(zip(ports, weights)):
            value.gw[i] = SwrrGateway(port=port, weight=weight)
        update_map(self._map, 0, value)

    def read(self) -> SwrrTable:
        value = SwrrTable()
        libbpf.map_lookup(self._map, 0, value)
        return value


class BenchObjects:
    """Every benchmark-only object of one run; closing them drops their programs and maps."""

    def __init__(self, objects: dict[str, Path], service_frame: bytes, service_port: int) -> None:
        self._opened: list[libbpf.BpfObject] = []
        try:
            self.xdp_pass = load_object(objects["xdp_pass"], {})
            self._opened.append(self.xdp_pass)
            self.pass_fd = self.xdp_pass.program_fd("xdp_pass")
            self.replay = Replay(objects["replay"], service_frame)
            self._opened.append(self.replay.obj)
            self.parse_only = load_object(objects["parse_only"], {".rodata.bench": struct.pack("<H", service_port)})
            self._opened.append(self.parse_only)
            self.parse_only_fd = self.parse_only.program_fd("parse_only")
            self.scan = ScanLowest(objects["scan_lowest"], service_port)
            self._opened.append(self.scan.obj)
            self.swrr = LockedSwrr(objects["locked_swrr"], service_port)
            self._opened.append(self.swrr.obj)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for obj in self._opened:
            obj.close()
        self._opened.clear()
