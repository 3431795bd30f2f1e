"""The kernel side as user space sees it: the ctypes binding to libbpf, the byte layout of
kernel/ebpflb.h, the shipped object and its names, feature probes, the verifier's log."""
