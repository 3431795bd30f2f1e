"""Loads that cannot work: a kernel without a feature the object needs (probed once, named in
one line) and a program the verifier refuses (its log captured whole, its reason shown)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from typer.testing import CliRunner

from ebpflb.bpf import libbpf, probes, verifier_log
from ebpflb.cli import app
from ebpflb.dataplane.loading import load_object
from ebpflb.errors import EbpflbError

from ..netns import NetNS

VMLINUX_H = Path(__file__).resolve().parents[2] / "vmlinux.h"

# The tail of a real verifier log (Linux 6.x) of an XDP program reading its packet unchecked.
SAMPLE_LOG = """\
func#0 @0
0: R1=ctx() R10=fp0
; unsigned char *data = (unsigned char *)(long)ctx->data; @ broken.bpf.c:7
0: (61) r2 = *(u32 *)(r1 +0)          ; R1=ctx() R2_w=pkt(r=0)
; return data[0]; @ broken.bpf.c:8
1: (71) r0 = *(u8 *)(r2 +0)
invalid access to packet, off=0 size=1, R2(id=0,off=0,r=0)
R2 offset is outside of the packet

processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
"""


@pytest.fixture
def no_cached_probes() -> Iterator[None]:
    """Each test probes afresh, and leaves no result of its own to later ones."""
    probes.missing.cache_clear()
    yield
    probes.missing.cache_clear()


# ---------------------------------------------------------------- no kernel needed


def test_ids_match_the_kernel_headers() -> None:
    text = VMLINUX_H.read_text()
    for name, value in [
        ("BPF_PROG_TYPE_XDP", probes.BPF_PROG_TYPE_XDP),
        ("BPF_PROG_TYPE_SYSCALL", probes.BPF_PROG_TYPE_SYSCALL),
        ("BPF_FUNC_loop", probes.BPF_FUNC_LOOP),
        ("BPF_FUNC_map_lookup_percpu_elem", probes.BPF_FUNC_MAP_LOOKUP_PERCPU_ELEM),
    ]:
        assert re.search(rf"\b{name} = {value},", text), name


def test_a_missing_feature_is_one_line_naming_it_and_the_kernel_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = next(f for f in probes.FEATURES if f.name == "bpf_loop")
    monkeypatch.setattr(probes, "missing", lambda: (loop,))
    with pytest.raises(EbpflbError) as e:
        probes.require_kernel_features()
    assert str(e.value) == f"this kernel lacks bpf_loop (needs Linux 5.17 or newer; running {os.uname().release})"


def test_several_missing_features_need_the_newest_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes, "missing", lambda: probes.FEATURES)
    with pytest.raises(EbpflbError) as e:
        probes.require_kernel_features()
    assert "and bpf_loop and bpf_map_lookup_percpu_elem (needs Linux 5.19 or newer" in str(e.value)


def test_verifier_reason_is_the_last_lines_before_its_statistics() -> None:
    assert verifier_log.reason(SAMPLE_LOG) == [
        "1: (71) r0 = *(u8 *)(r2 +0)",
        "invalid access to packet, off=0 size=1, R2(id=0,off=0,r=0)",
        "R2 offset is outside of the packet",
    ]
    assert verifier_log.reason("only one line\n") == ["only one line"]
    assert verifier_log.reason("") == []


def test_verifier_log_is_found_in_libbpfs_messages() -> None:
    messages = [
        "libbpf: prog 'unchecked': BPF program load failed: Permission denied",
        f"libbpf: prog 'unchecked': -- BEGIN PROG LOAD LOG --\n{SAMPLE_LOG}-- END PROG LOAD LOG --",
        "libbpf: failed to load object 'broken.bpf.o'",
    ]
    assert verifier_log.find(messages) == ("unchecked", SAMPLE_LOG)
    assert verifier_log.find(messages[:1]) is None
    text = verifier_log.explain(messages)
    assert text is not None and "\n" not in text
    path = text.split("whole verifier log in ")[1].rstrip(")")
    try:
        assert Path(path).read_text() == SAMPLE_LOG
    finally:
        os.unlink(path)
    assert text.startswith(
        "the kernel verifier refused program unchecked: 1: (71) r0 = *(u8 *)(r2 +0) | "
        "invalid access to packet, off=0 size=1, R2(id=0,off=0,r=0) | R2 offset is outside of the packet "
    )


# ---------------------------------------------------------------- the running kernel


@pytest.mark.kernel
@pytest.mark.usefixtures("bpffs", "no_cached_probes")
def test_this_kernel_has_every_feature() -> None:
    assert {f.name: f.probe() for f in probes.FEATURES} == {f.name: 1 for f in probes.FEATURES}
    assert probes.missing() == ()
    probes.require_kernel_features()


@pytest.mark.kernel
@pytest.mark.usefixtures("bpffs")
def test_a_helper_the_kernel_does_not_know_probes_as_missing() -> None:
    assert libbpf.probe_helper(probes.BPF_PROG_TYPE_XDP, 100000) == 0


@pytest.mark.kernel
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


@pytest.mark.kernel
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
