"""ebpflb: a kernel-fast UDP load balancer for local listeners."""

__version__ = "0.1.0"
