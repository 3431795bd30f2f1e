"""Every default the kernel object is compiled with (kernel/config.bpf.h), defined once for
user space. tests/unit checks each against the shipped object's `.rodata.config` section, so
the CLI, the gateway helper and the demo can never drift from what `xdp-loader` users get."""

SERVICE_PORT = 2152
REG_PORT = 3000
EXPIRY_S = 30.0
GATEWAY_PORTS = (1024, 65535)  # ports an unprivileged user may bind: see the README's threat model
