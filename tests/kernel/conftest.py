"""The loaded object most kernel tests share: one load per module, reset before each test."""

from __future__ import annotations

from typing import Iterator

import pytest

from ..dataplane import Dataplane, shared


@pytest.fixture(scope="module")
def module_dataplane(bpffs: str) -> Iterator[Dataplane]:
    with shared(bpffs) as plane:
        yield plane


@pytest.fixture
def dataplane(module_dataplane: Dataplane) -> Dataplane:
    """The module's loaded object, reset to the state of a fresh load, in its own namespace."""
    module_dataplane.reset()
    return module_dataplane
