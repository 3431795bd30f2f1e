#!/usr/bin/env python3
"""The smallest ebpflb gateway: a UDP daemon that registers itself with a fixed weight.

    sudo ebpflb load lo                      # or eth0; lo is always attached for registrations
    python3 examples/minimal_gateway.py 7001 3
    python3 examples/minimal_gateway.py 7002 1
    # datagrams sent to port 2152 now arrive 3:1 on ports 7001 and 7002
"""

import argparse
import signal

from ebpflb.gateway import Gateway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int, help="UDP port to receive service datagrams on")
    parser.add_argument("weight", type=int, nargs="?", default=1, help="weight, 1-65535 (default 1)")
    args = parser.parse_args()
    # `kill` (SIGTERM) leaves like Ctrl-C does: through the `with` block, which deregisters
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    # Binds 127.0.0.1:PORT, registers from that socket and heartbeats every second;
    # leaving the block (or the process exiting) deregisters with weight 0.
    with Gateway(port=args.port, weight=args.weight) as gw:
        print(f"gateway on port {gw.port} registered with weight {gw.weight}; Ctrl-C stops it", flush=True)
        try:
            while True:
                data, peer = gw.sock.recvfrom(65535)
                print(f"{len(data)} bytes from {peer[0]}:{peer[1]}", flush=True)
        except KeyboardInterrupt:
            pass
    print("deregistered", flush=True)


if __name__ == "__main__":
    main()
