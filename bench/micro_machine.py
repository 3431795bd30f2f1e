"""A description of the machine and software a run measured, for the report."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from dataclasses import dataclass

from ebpflb.bpf.object_file import object_path

from .micro_build import REPO, makefile_compiler


def _read(path: str, default: str = "?") -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _run(*args: str) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, cwd=REPO, check=False).stdout.strip()
    except OSError:
        return "?"


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo", "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _distribution() -> str:
    for line in _read("/etc/os-release", "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "?"


def load_average() -> str:
    return " ".join(_read("/proc/loadavg").split()[:3])


@dataclass
class Machine:
    cpu: str
    cpus: int
    pinned_cpu: int
    kernel: str
    distribution: str
    clang: str
    libbpf: str
    jit: str
    bpf_stats: str
    obj: str  # the shipped object measured: sha256 and whether git has it committed as is
    commit: str

    @classmethod
    def describe(cls, pinned_cpu: int) -> "Machine":
        data = object_path().read_bytes()
        relative = str(object_path().relative_to(REPO))
        dirty = _run("git", "status", "--porcelain", "--", relative)
        return cls(
            cpu=_cpu_model(),
            cpus=os.cpu_count() or 0,
            pinned_cpu=pinned_cpu,
            kernel=platform.release(),
            distribution=_distribution(),
            clang=_run(makefile_compiler()[0], "--version").splitlines()[0] if makefile_compiler() else "?",
            libbpf=_run("dpkg-query", "-W", "-f=${Version}", "libbpf1") or "?",
            jit={"1": "on", "2": "on (debug)"}.get(_read("/proc/sys/net/core/bpf_jit_enable"), "off"),
            bpf_stats={"0": "off", "1": "on"}.get(_read("/proc/sys/kernel/bpf_stats_enabled"), "?"),
            obj=f"{relative} sha256 {hashlib.sha256(data).hexdigest()[:16]}"
            + (" (differs from the commit)" if dirty else ""),
            commit=_run("git", "rev-parse", "--short", "HEAD") or "?",
        )

    def lines(self) -> list[tuple[str, str]]:
        return [
            ("CPU", f"{self.cpu}, {self.cpus} vCPUs; the benchmark runs pinned to CPU {self.pinned_cpu}"),
            ("Kernel", f"{self.kernel} ({self.distribution}); BPF JIT {self.jit}, bpf_stats {self.bpf_stats}"),
            ("Tools", f"{self.clang}; libbpf {self.libbpf}"),
            ("Measured", f"{self.obj}, repository at {self.commit}"),
        ]


def cpu_ticks() -> dict[int, tuple[int, int, int]]:
    """{cpu: (busy, steal, total)} clock ticks so far, from /proc/stat."""
    ticks: dict[int, tuple[int, int, int]] = {}
    for line in _read("/proc/stat", "").splitlines():
        fields = line.split()
        if fields and fields[0].startswith("cpu") and fields[0] != "cpu":
            # user nice system idle iowait irq softirq steal
            user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
            busy = user + nice + system + irq + softirq
            ticks[int(fields[0][3:])] = (busy, steal, busy + idle + iowait + steal)
    return ticks


def cpu_report(pinned: int, before: dict[int, tuple[int, int, int]]) -> str:
    """Steal time on the pinned CPU and how busy the others were since `before`: on this VM a
    busy sibling vCPU slows every figure about twofold, so a reader needs to know."""
    now = cpu_ticks()

    def share(cpu: int, index: int) -> float:
        return (now[cpu][index] - before[cpu][index]) / max(now[cpu][2] - before[cpu][2], 1)

    others = ", ".join(f"CPU {cpu} {share(cpu, 0):.0%}" for cpu in sorted(now) if cpu != pinned and cpu in before)
    return f"steal time on CPU {pinned}: {share(pinned, 1):.1%}; busy during the run: {others or 'no other CPU'}"


class InterruptCount:
    """Interrupts taken so far by one CPU (/proc/interrupts, its column summed): read before and
    after a timed run, a difference says the run shared its time with an interrupt handler."""

    def __init__(self, cpu: int) -> None:
        self._fd = os.open("/proc/interrupts", os.O_RDONLY)
        header = os.pread(self._fd, 1 << 20, 0).decode().splitlines()[0].split()
        self._column = header.index(f"CPU{cpu}") + 1  # each row starts with its name

    def read(self) -> int:
        total = 0
        for line in os.pread(self._fd, 1 << 20, 0).decode().splitlines()[1:]:
            fields = line.split()
            if len(fields) > self._column and fields[self._column].isdigit():
                total += int(fields[self._column])
        return total

    def close(self) -> None:
        os.close(self._fd)
