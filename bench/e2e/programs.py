"""The C traffic programs: compiled at run time, then driven as subprocesses."""
from __future__ import annotations

import os
import select
import signal
import subprocess
from dataclasses import dataclass

from netns import in_ns

HERE = os.path.dirname(os.path.abspath(__file__))


def compile_programs(out_dir: str) -> dict[str, str]:
    binaries = {}
    for name in ("sender", "gateway"):
        binary = os.path.join(out_dir, name)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", binary, os.path.join(HERE, f"{name}.c")],
                       check=True)
        binaries[name] = binary
    return binaries


@dataclass
class SendResult:
    sent: int
    elapsed_s: float
    errors: int


def run_sender(binary: str, ns: str, dst: str, port: int, rate: float, seconds: float,
               payload: int, cpu: int, batch: int) -> SendResult:
    argv = in_ns(ns, [binary, "-d", dst, "-p", str(port), "-r", str(int(rate)), "-t", str(seconds),
                      "-s", str(payload), "-c", str(cpu), "-b", str(batch)])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 20, check=True).stdout
    fields = dict(item.split("=") for item in out.split())
    return SendResult(int(fields["sent"]), int(fields["elapsed_ns"]) / 1e9, int(fields["errors"]))


class Gateways:
    """One process holding all N gateway sockets; counts per port are read on demand via SIGUSR1."""

    def __init__(self, binary: str, ns: str, ports: list[int], weights: list[int], cpu: int,
                 register_port: int | None, poll_us: int, bind_ip: str = "0.0.0.0",
                 echo: bool = False) -> None:
        argv = [binary, "-p", ",".join(map(str, ports)), "-b", bind_ip, "-c", str(cpu),
                "-i", str(poll_us)] + (["-e"] if echo else [])
        if register_port is not None:
            argv += ["-w", ",".join(map(str, weights)), "-r", str(register_port)]
        self.ports = ports
        self.proc = subprocess.Popen(in_ns(ns, argv), stdout=subprocess.PIPE, text=True)
        if self._read_line(5.0) != "ready":
            self.stop()
            raise RuntimeError("gateway process did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError("gateway process did not answer")
        return self.proc.stdout.readline().strip()

    def counts(self) -> dict[int, int]:
        """Cumulative datagrams received per gateway port."""
        self.proc.send_signal(signal.SIGUSR1)
        line = self._read_line(5.0)
        if not line.startswith("counts"):
            raise RuntimeError(f"unexpected gateway output: {line!r}")
        result = {}
        for item in line.split()[1:]:
            port, packets, _bytes = item.split(":")
            result[int(port)] = int(packets)
        return result

    def pause(self) -> None:
        # Idle rigs' gateways must not wake up (and cost CPU) while another rig is measured.
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
