"""The HTTP endpoint: `/metrics` in the Prometheus text exposition, the pins read anew on every
scrape. Served by prometheus-client's threaded server, from `ebpflb exporter` or from inside
`ebpflb run --metrics-listen`."""

from __future__ import annotations

import re
from typing import Callable

from ebpflb.errors import EbpflbError

DEFAULT_LISTEN = "127.0.0.1:9862"  # loopback: the metrics name the host's services; open it up on purpose


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (all IPv4 addresses) -> (host, port); EbpflbError otherwise."""
    match = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):(\d{1,5})", text.strip())
    if not match or int(match.group(3)) > 65535:  # port 0: any free port (the address is printed)
        raise EbpflbError(f"listen address {text!r} is not HOST:PORT: write e.g. {DEFAULT_LISTEN} or [::1]:9862")
    return match.group(1) or match.group(2) or "0.0.0.0", int(match.group(3))


class MetricsServer:
    """Serves /metrics for the instance at pin_path on a thread of its own until close(). A
    scrape that cannot read the instance serves `ebpflb_up 0`, and `report` hears why once."""

    def __init__(self, pin_path: str, listen: str, report: Callable[[str], None]) -> None:
        # imported here: prometheus-client takes a tenth of the CLI's start-up, and most commands need none of it
        from prometheus_client.exposition import start_http_server

        from ebpflb.metrics.collector import registry_for

        host, port = parse_listen(listen)
        registry, self.collector = registry_for(pin_path, report)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as e:
            raise EbpflbError(f"cannot listen on {listen}: {e.strerror or e}: choose another address") from None
        self.address = (str(self._server.server_address[0]), int(self._server.server_address[1]))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
