"""Loads that cannot work, without a kernel: the message naming a feature the kernel lacks
(probes monkeypatched) and the verifier's reason cut from libbpf's messages. The loads
themselves are tests/kernel/test_load_failures_kernel.py."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ebpflb.bpf import probes, verifier_log
from ebpflb.errors import EbpflbError

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


class _ObjectWithoutReplyNat:
    """A loaded object whose reply NAT program was left out (kernel without its kfunc)."""

    def __init__(self) -> None:
        self.autoload: dict[str, bool] = {}

    def set_autoload(self, name: str, autoload: bool) -> None:
        self.autoload[name] = autoload

    def load(self) -> None:
        pass

    def program_fd(self, name: str) -> int:
        raise AssertionError(f"{name} was not loaded")


def test_a_kernel_without_the_reply_nat_kfunc_loads_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    from ebpflb.bpf.object_file import REPLY_NAT_PROGRAM
    from ebpflb.dataplane import instance, loading
    from ebpflb.dataplane.config import config_for

    monkeypatch.setattr(loading, "require_kernel_features", lambda: None)
    monkeypatch.setattr(loading, "reply_nat_loadable", lambda: False)
    monkeypatch.setattr(instance, "reply_nat_loadable", lambda: False)
    obj = _ObjectWithoutReplyNat()
    loading.load_object(obj, "/nonexistent")  # type: ignore[arg-type]
    assert obj.autoload == {REPLY_NAT_PROGRAM: False}
    with pytest.raises(EbpflbError, match="--no-reply-nat"):
        instance._sync_reply_nat("/nonexistent", obj, config_for(2152, 3000, 30, False, False, False), [])  # type: ignore[arg-type]
    # without reply NAT nothing needs the program
    monkeypatch.setattr(instance, "sync_reply_nat", lambda *args: None)
    no_nat = config_for(2152, 3000, 30, False, False, False, reply_nat=False)
    instance._sync_reply_nat("/nonexistent", obj, no_nat, [])  # type: ignore[arg-type]
