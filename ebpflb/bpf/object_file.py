"""Where the shipped, prebuilt XDP object lives inside the package."""

from pathlib import Path

OBJECT_NAME = "ebpflb.bpf.o"
XDP_PROGRAM = "ebpflb_xdp"
CONTROL_PROGRAM = "ebpflb_control"
REPLY_NAT_PROGRAM = "ebpflb_reply_nat"
CONFIG_SECTION = ".rodata.config"
PINNED_MAPS = ("lb_state", "lb_schedules", "lb_percpu", "lb_port_index", "lb_flows")


def object_path() -> Path:
    return Path(__file__).resolve().parent / OBJECT_NAME
