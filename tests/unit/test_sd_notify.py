"""The readiness datagram a Type=notify unit waits for, on a socket of the test's own."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ebpflb.cli.sd_notify import sd_notify


def test_ready_reaches_the_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sd_notify("READY=1")
        assert manager.recv(64) == b"READY=1"


def test_an_abstract_socket_is_written_with_a_leading_nul(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ebpflb-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("STOPPING=1")
        assert manager.recv(64) == b"STOPPING=1"


def test_without_systemd_nothing_is_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sd_notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not sd_notify("READY=1")  # the manager went away: not an error
