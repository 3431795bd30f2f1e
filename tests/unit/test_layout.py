"""ebpflb/bpf/layout.py against the shipped object's BTF and kernel/ebpflb.h.

The ctypes mirror is the byte contract user space reads the maps with: every struct must
have the C struct's size, and every member its name, offset and size. The BTF comes from
`bpftool -j btf dump file` on the shipped object, the one user space actually loads.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from ebpflb.bpf import defaults as compiled
from ebpflb.bpf import layout
from ebpflb.bpf.libbpf import BpfObject
from ebpflb.bpf.object_file import CONFIG_SECTION, PINNED_MAPS, object_path
from ebpflb.dataplane.config import config_for

REPO = Path(__file__).resolve().parents[2]
HEADER = REPO / "kernel" / "ebpflb.h"
BTF_MAP_ARRAY, BTF_MAP_PERCPU_ARRAY = 2, 6


@lru_cache(maxsize=1)
def btf_types() -> dict[int, dict[str, Any]]:
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool is not installed (make deps installs it)")
    out = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", str(object_path())], check=True, capture_output=True, text=True
    ).stdout
    return {t["id"]: t for t in json.loads(out)["types"]}


def named(kind: str, name: str) -> dict[str, Any]:
    found = [t for t in btf_types().values() if t["kind"] == kind and t.get("name") == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} in the object's BTF"
    return found[0]


def resolve(type_id: int) -> dict[str, Any]:
    """Follows typedefs and qualifiers to the type that has a layout."""
    t = btf_types()[type_id]
    while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
        t = btf_types()[t["type_id"]]
    return t


def type_size(type_id: int) -> int:
    t = resolve(type_id)
    if t["kind"] == "ARRAY":
        return t["nr_elems"] * type_size(t["type_id"])
    if t["kind"] == "PTR":
        return 8
    return int(t["size"])


def python_name(c_name: str) -> str:
    return "global_" if c_name == "global" else c_name


def mirror_of_btf_struct(t: dict[str, Any]) -> type[ctypes.Structure] | None:
    return layout.BTF_MIRRORS.get(t.get("name", ""))


@pytest.mark.parametrize("c_name", sorted(layout.BTF_MIRRORS))
def test_struct_matches_btf(c_name: str) -> None:
    mirror = layout.BTF_MIRRORS[c_name]
    btf = named("STRUCT", c_name)
    assert ctypes.sizeof(mirror) == btf["size"], f"sizeof(struct {c_name})"
    c_members = [python_name(m["name"]) for m in btf["members"]]
    assert [name for name, *_ in mirror._fields_] == c_members, f"members of struct {c_name}"
    for member in btf["members"]:
        name = python_name(member["name"])
        field = getattr(mirror, name)
        assert member.get("bitfield_size", 0) == 0, f"{c_name}.{member['name']} is a bitfield"
        assert member["bits_offset"] % 8 == 0
        assert field.offset == member["bits_offset"] // 8, f"offset of {c_name}.{member['name']}"
        assert field.size == type_size(member["type_id"]), f"size of {c_name}.{member['name']}"
        # a nested struct must be mirrored by the class of that struct, not a lookalike
        target = resolve(member["type_id"])
        while target["kind"] == "ARRAY":
            target = resolve(target["type_id"])
        if target["kind"] == "STRUCT" and mirror_of_btf_struct(target) is not None:
            ctype: Any = {n: t for n, t, *_ in mirror._fields_}[name]
            while issubclass(ctype, ctypes.Array):
                ctype = ctype._type_
            assert ctype is mirror_of_btf_struct(target), f"type of {c_name}.{member['name']}"


def test_every_shared_struct_is_mirrored() -> None:
    """Each struct of kernel/ebpflb.h is in BTF_MIRRORS, so none escapes this check."""
    declared = set(re.findall(r"^struct (\w+) \{", HEADER.read_text(), re.M))
    assert declared == set(layout.BTF_MIRRORS)


def test_lock_is_a_bpf_spin_lock_of_four_bytes() -> None:
    lock = next(m for m in named("STRUCT", "lb_state")["members"] if m["name"] == "lock")
    assert resolve(lock["type_id"])["name"] == "bpf_spin_lock"
    assert layout.LbState.lock.size == 4


def test_config_section_layout() -> None:
    """.rodata.config holds exactly one struct lb_config at offset 0, which the loader
    overwrites as a whole before load; its initial bytes are the documented defaults."""
    datasec = named("DATASEC", CONFIG_SECTION)
    assert len(datasec["vars"]) == 1
    var = btf_types()[datasec["vars"][0]["type_id"]]
    assert var["kind"] == "VAR" and var["name"] == "lb_config"
    assert datasec["vars"][0]["offset"] == 0
    assert datasec["vars"][0]["size"] == ctypes.sizeof(layout.LbConfig)
    assert resolve(var["type_id"]) == named("STRUCT", "lb_config")

    with BpfObject(str(object_path())) as obj:
        section = bytes(obj.section(CONFIG_SECTION))
    assert len(section) == ctypes.sizeof(layout.LbConfig)
    defaults = layout.LbConfig.from_buffer_copy(section)
    assert (defaults.service_port, defaults.reg_port, defaults.expiry_ns) == (2152, 3000, 30 * 10**9)
    assert (defaults.gw_port_min, defaults.gw_port_max) == (1024, 65535)
    # the one Python definition of each default is what the object was compiled with
    assert (defaults.service_port, defaults.reg_port) == (compiled.SERVICE_PORT, compiled.REG_PORT)
    assert defaults.expiry_ns == int(compiled.EXPIRY_S * 1e9)
    assert (defaults.gw_port_min, defaults.gw_port_max) == compiled.GATEWAY_PORTS
    assert (defaults.trace, defaults.userspace_reg, defaults.drop_without_gateway) == (0, 0, 0)
    assert (defaults.balance_forwarded, defaults.reply_nat, defaults.check_sockets) == (0, 1, 1)
    assert (defaults.affinity_ns, defaults.affinity_key, defaults.pad) == (0, 0, 0)
    # ... and what config_for gives when no option says otherwise
    chosen = config_for(compiled.SERVICE_PORT, compiled.REG_PORT, compiled.EXPIRY_S, False, False, False)
    assert bytes(chosen) == section


def map_definition(name: str) -> dict[str, int | str]:
    """A BTF-defined map: __uint() members are pointers to arrays of that many elements."""
    var = named("VAR", name)
    members = {m["name"]: m["type_id"] for m in resolve(var["type_id"])["members"]}

    def number(member: str) -> int:
        return int(resolve(btf_types()[members[member]]["type_id"])["nr_elems"])

    value = resolve(btf_types()[members["value"]]["type_id"])
    return {
        "type": number("type"),
        "max_entries": number("max_entries"),
        "key_size": type_size(btf_types()[members["key"]]["type_id"]),
        "value": value["name"],
        "value_size": int(value["size"]),
    }


@pytest.mark.parametrize(
    "name,map_type,entries,mirror",
    [
        ("lb_state", BTF_MAP_ARRAY, 1, layout.LbState),
        ("lb_schedules", BTF_MAP_ARRAY, layout.SCHED_BUFFERS, layout.Schedule),
        ("lb_percpu", BTF_MAP_PERCPU_ARRAY, 1, layout.CpuData),
    ],
)
def test_pinned_maps_hold_the_mirrored_structs(name: str, map_type: int, entries: int, mirror: type) -> None:
    assert name in PINNED_MAPS
    definition = map_definition(name)
    c_name = next(c for c, m in layout.BTF_MIRRORS.items() if m is mirror)
    assert definition == {
        "type": map_type,
        "max_entries": entries,
        "key_size": 4,
        "value": c_name,
        "value_size": ctypes.sizeof(mirror),
    }


def header_defines() -> dict[str, int]:
    return {
        name: int(value, 0)
        for name, value in re.findall(r"^#define (\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", HEADER.read_text(), re.M)
    }


def header_enum(name: str) -> dict[str, int]:
    body = re.search(r"enum " + name + r" \{(.*?)\};", HEADER.read_text(), re.S)
    assert body, f"enum {name} in {HEADER}"
    return {k: int(v) for k, v in re.findall(r"^\s*(\w+)\s*=\s*(\d+)", body.group(1), re.M)}


def test_constants_match_the_header() -> None:
    defines = header_defines()
    assert defines["MAX_GATEWAYS"] == layout.MAX_GATEWAYS
    assert defines["SCHED_SIZE"] == layout.SCHED_SIZE
    assert defines["SCHED_BUFFERS"] == layout.SCHED_BUFFERS
    assert defines["MAX_WEIGHT"] == layout.MAX_WEIGHT
    assert defines["REG_PAYLOAD_MIN"] == layout.REG_PAYLOAD_MIN
    assert defines["EBPFLB_ABI_VERSION"] == layout.ABI_VERSION
    assert layout.LbState.abi_version.offset == 0  # read first, whatever the rest of the layout
    # the object was built with them: the arrays they size have those lengths
    assert layout.LbState.gw.size == layout.MAX_GATEWAYS * ctypes.sizeof(layout.Gateway)
    assert layout.Schedule.entry.size == layout.SCHED_SIZE * ctypes.sizeof(ctypes.c_uint32)


def test_enums_match_the_header() -> None:
    reasons = header_enum("reject_reason")
    assert reasons.pop("NR_REJECT_REASONS") == layout.NR_REJECT_REASONS
    assert reasons == {f"REJECT_{r.name}": r.value for r in layout.RejectReason}
    assert header_enum("ctl_op") == {f"CTL_{op.name}": op.value for op in layout.CtlOp}
    assert layout.GlobalCounters.reg_rejected.size == layout.NR_REJECT_REASONS * 8
