"""Loads that cannot work, in the running kernel: a kernel without a feature the object needs
(probed once, named in one line) and a program the verifier refuses (its log captured whole,
its reason shown). Messages without a kernel: tests/unit/test_load_failures.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from typer.testing import CliRunner

from ebpflb.bpf import libbpf, probes
from ebpflb.cli import app
from ebpflb.dataplane.loading import load_object
from ebpflb.errors import EbpflbError

from ..netns import NetNS

pytestmark = pytest.mark.kernel


@pytest.fixture
def no_cached_probes() -> Iterator[None]:
    """Each test probes afresh, and leaves no result of its own to later ones."""
    probes.missing.cache_clear()
    yield
    probes.missing.cache_clear()


@pytest.mark.usefixtures("bpffs", "no_cached_probes")
def test_this_kernel_has_every_feature() -> None:
    assert {f.name: f.probe() for f in probes.FEATURES} == {f.name: 1 for f in probes.FEATURES}
    assert probes.missing() == ()
    probes.require_kernel_features()


@pytest.mark.usefixtures("bpffs")
def test_a_helper_the_kernel_does_not_know_probes_as_missing() -> None:
    assert libbpf.probe_helper(probes.BPF_PROG_TYPE_XDP, 100000) == 0


def test_load_on_a_kernel_without_a_feature_fails_in_one_line(
    netns: NetNS, pin_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    percpu = next(f for f in probes.FEATURES if f.name == "bpf_map_lookup_percpu_elem")
    monkeypatch.setattr(probes, "missing", lambda: (percpu,))
    with netns.entered():
        result = CliRunner().invoke(app, ["load", "lo", "--pin-path", pin_path])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception  # an exit, not a crash
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        "error: this kernel lacks bpf_map_lookup_percpu_elem "
        f"(needs Linux 5.19 or newer; running {os.uname().release})"
    ]
    assert not os.path.exists(pin_path), "a refused load left its pin directory"
    link = json.loads(netns.ip("-j", "-d", "link", "show", "dev", "lo"))[0]
    assert "xdp" not in link


# Reads the packet without checking it against data_end, after enough other work that the
# verifier's log is several kilobytes long (libbpf's messages used to be cut at 1024 bytes).
UNCHECKED_READ_C = """// SPDX-License-Identifier: GPL-2.0
struct xdp_md { unsigned int data, data_end, data_meta, ingress_ifindex, rx_queue_index; };

__attribute__((section("xdp"), used)) int unchecked(struct xdp_md *ctx)
{
	unsigned char *data = (unsigned char *)(long)ctx->data;
	unsigned long sum = ctx->ingress_ifindex;

#pragma unroll
	for (int i = 0; i < 200; i++) {
		sum += i;
		asm volatile("" : "+r"(sum)); /* one instruction per step, not folded */
	}
	return data[0] + (sum & 1);
}
char _license[] __attribute__((section("license"), used)) = "GPL";
"""


@pytest.mark.usefixtures("bpffs")
def test_verifier_refusal_shows_its_reason_and_keeps_the_whole_log(tmp_path: Path) -> None:
    source, obj_path = tmp_path / "unchecked.bpf.c", tmp_path / "unchecked.bpf.o"
    source.write_text(UNCHECKED_READ_C)
    subprocess.run(["clang", "-O2", "-target", "bpf", "-c", str(source), "-o", str(obj_path)], check=True)

    with libbpf.BpfObject(str(obj_path)) as obj, pytest.raises(EbpflbError) as e:
        load_object(obj, str(tmp_path / "pins"))
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith("loading the BPF object failed: the kernel verifier refused program unchecked: ")
    assert "invalid access to packet" in text
    saved = Path(text.split("whole verifier log in ")[1].rstrip(")"))
    try:
        log = saved.read_text()
    finally:
        saved.unlink()
    assert len(log) > 4096, "the verifier log is cut short"
    assert re.search(r"^0: ", log, re.MULTILINE), log[:300]  # from the first instruction
    assert "invalid access to packet" in log and re.search(r"^processed \d+ insns", log, re.MULTILINE)
