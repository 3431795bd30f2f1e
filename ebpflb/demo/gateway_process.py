"""One gateway process of the demo: an ebpflb.gateway.Gateway that counts what it receives.

It reports `received N` on stdout every 0.1 s and obeys one command per stdin line:
`weight N` (re-weight now), `silence` (stop heartbeating but keep receiving, so it expires),
`quit` (deregister, print `final N`, exit). End of stdin means quit: a gateway never outlives
the demo that started it. Ctrl-C in the terminal is left to the demo, which stops gateways
in order."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading

from ebpflb.gateway import DEFAULT_REG_PORT, Gateway

SO_RCVBUFFORCE = 33  # root may exceed rmem_max: a burst must not overflow the queue
RCVBUF_BYTES = 4 << 20
REPORT_INTERVAL_S = 0.1


class Counter:
    def __init__(self) -> None:
        self.value = 0


def receive(sock: socket.socket, received: Counter, stopping: threading.Event) -> None:
    """Counts datagrams until told to stop and the queue is empty, so the final count is exact."""
    sock.settimeout(0.05)
    while True:
        try:
            sock.recv(65535)
        except socket.timeout:
            if stopping.is_set():
                return
            continue
        received.value += 1


def report(received: Counter, done: threading.Event) -> None:
    while not done.wait(REPORT_INTERVAL_S):
        print(f"received {received.value}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ebpflb.demo.gateway_process")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--weight", type=int, required=True)
    parser.add_argument("--interval", type=float, default=1.0, help="heartbeat interval, seconds")
    parser.add_argument("--reg-port", type=int, default=DEFAULT_REG_PORT)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
    sock.bind(("127.0.0.1", args.port))
    received, done = Counter(), threading.Event()
    gw = Gateway(sock=sock, weight=args.weight, reg_port=args.reg_port, interval=args.interval)
    receiver = threading.Thread(target=receive, args=(sock, received, done), daemon=True)
    receiver.start()
    threading.Thread(target=report, args=(received, done), daemon=True).start()
    print(f"registered {gw.port} {gw.weight}", flush=True)

    for line in sys.stdin:
        command, _, value = line.strip().partition(" ")
        if command == "weight":
            gw.weight = int(value)
            print(f"weight {gw.weight}", flush=True)
        elif command == "silence":
            gw.stop(deregister=False)
            print("silent", flush=True)
        elif command == "quit":
            break
    gw.close()  # deregisters first: nothing new arrives while the queue drains
    done.set()
    receiver.join()
    sock.close()
    print(f"final {received.value}", flush=True)


if __name__ == "__main__":
    main()
