/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Load-time configuration: its own read-only section, written by the loader before load;
 * xdp-loader users get these defaults. The verifier sees the values, so a disabled
 * feature costs nothing on the packet path. */
#ifndef CONFIG_BPF_H
#define CONFIG_BPF_H

#define DEFAULT_SERVICE_PORT	2152
#define DEFAULT_REG_PORT	3000
#define DEFAULT_EXPIRY_NS	(30ULL * 1000000000ULL)
#define DEFAULT_GW_PORT_MIN	1024	/* unprivileged ports: see the README's threat model */
#define DEFAULT_GW_PORT_MAX	65535

const volatile struct lb_config lb_config SEC(".rodata.config") = {
	.service_port = DEFAULT_SERVICE_PORT,
	.reg_port = DEFAULT_REG_PORT,
	.gw_port_min = DEFAULT_GW_PORT_MIN,
	.gw_port_max = DEFAULT_GW_PORT_MAX,
	.expiry_ns = DEFAULT_EXPIRY_NS,
	.reply_nat = 1,
	.check_sockets = 1,
};

#define trace(fmt, ...)                                        \
	({                                                     \
		if (lb_config.trace)                              \
			bpf_printk("ebpflb: " fmt, ##__VA_ARGS__); \
	})

#endif /* CONFIG_BPF_H */
