"""Shared fixtures. Kernel tests skip without root or bpffs on a laptop; under CI=true every
skip is turned into a failure, so CI can never pass by skipping the kernel."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from ebpflb.dataplane import Instance

from .netns import NetNS, sh

IN_CI = os.environ.get("CI", "").lower() == "true"
BPFFS = "/sys/fs/bpf"

# A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored in
# every child: the tests that press Ctrl-C on their subprocesses need it handled here (a child
# then starts with the default action).
signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """Tests under tests/kernel and tests/system must carry the `kernel` mark (so CI never
    passes by skipping them); tests under tests/unit must not (they run without root)."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        marked = item.get_closest_marker("kernel") is not None
        if folder in ("kernel", "system") and not marked:
            raise pytest.UsageError(f"{item.nodeid}: a test in tests/{folder} needs `pytestmark = pytest.mark.kernel`")
        if folder == "unit" and marked:
            raise pytest.UsageError(f"{item.nodeid}: tests/unit is for tests without root or kernel")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which is a failure: {report.longrepr}"


def _is_mounted(path: str) -> bool:
    return subprocess.run(["mountpoint", "-q", path]).returncode == 0


@pytest.fixture(scope="session", autouse=True)
def tracefs_as_found() -> Iterator[None]:
    """`ebpflb trace` mounts tracefs when it is missing; unmount it after the session if so."""
    path = "/sys/kernel/tracing"
    was_mounted = _is_mounted(path)
    yield
    if not was_mounted and os.geteuid() == 0 and _is_mounted(path):
        sh("umount", path, check=False)


@pytest.fixture(scope="session")
def bpffs() -> Iterator[str]:
    """Mounts bpffs for the session when the machine has none, and unmounts it after."""
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    mounted_here = False
    if not _is_mounted(BPFFS):
        sh("mount", "-t", "bpf", "bpf", BPFFS)
        mounted_here = True
    yield BPFFS
    if mounted_here:
        sh("umount", BPFFS, check=False)


@pytest.fixture
def pin_path(bpffs: str) -> Iterator[str]:
    """A pin directory of this test only; whatever is still loaded there is removed after."""
    path = f"{bpffs}/ebpflb-test-{uuid.uuid4().hex[:12]}"
    yield path
    if Path(path).exists():
        try:
            Instance(path).unload()
        except Exception:
            subprocess.run(["rm", "-rf", path], check=False)


@pytest.fixture
def netns(bpffs: str) -> Iterator[NetNS]:
    """A fresh network namespace with lo up; deleted after the test, also on failure."""
    ns = NetNS()
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def netns_factory(bpffs: str) -> Iterator:
    made: list[NetNS] = []

    def make(tag: str = "t") -> NetNS:
        ns = NetNS(tag)
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.delete()
