"""ebpflb.gateway without a kernel: arguments it refuses and the registration payload it sends.
Against the real kernel: tests/system/test_gateway_helper.py."""

from __future__ import annotations

import socket

import pytest

from ebpflb.gateway import Gateway, registration_payload


@pytest.mark.parametrize("weight", [-1, 65536, 1.5, True, "3"])
def test_weight_out_of_range_is_refused(weight: object) -> None:
    with pytest.raises(ValueError):
        Gateway(weight=weight, start=False)  # type: ignore[arg-type]


def test_payload_is_weight_big_endian() -> None:
    assert registration_payload(5) == b"\x00\x00\x00\x05"
    assert registration_payload(65535) == b"\x00\x00\xff\xff"
    assert registration_payload(0) == b"\x00\x00\x00\x00"


def test_unbound_socket_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, pytest.raises(ValueError, match="bound"):
        Gateway(sock=sock, start=False)
