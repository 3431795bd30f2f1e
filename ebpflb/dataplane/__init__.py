"""The running dataplane: pins and ownership (pins), attaching and discovery (attach),
loading the object (loading), reading its state (state), control operations (control),
user-space registrations; `Instance` (instance) is the facade over them."""

from ebpflb.dataplane.attach import Attachment
from ebpflb.dataplane.config import DEFAULT_GATEWAY_PORTS, config_for
from ebpflb.dataplane.instance import Instance
from ebpflb.dataplane.pins import DEFAULT_PIN_PATH, default_pin_path
from ebpflb.dataplane.state import GatewayInfo, Snapshot

__all__ = [
    "DEFAULT_GATEWAY_PORTS",
    "DEFAULT_PIN_PATH",
    "Attachment",
    "GatewayInfo",
    "Instance",
    "Snapshot",
    "config_for",
    "default_pin_path",
]
