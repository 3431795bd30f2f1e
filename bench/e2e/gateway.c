/* A set of UDP gateway sockets in one process: counts datagrams per port with recvmmsg,
 * optionally heartbeats its weight to the ebpflb registration port from each socket, and
 * optionally (-e) echoes every datagram back to its sender with sendmmsg.
 * Prints "ready" once bound, "counts P:PKTS:BYTES ..." on SIGUSR1 and on SIGTERM (then exits). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_GW 256	/* as ebpflb's MAX_GATEWAYS */
#define VLEN 64
#define HEARTBEAT_NS 2000000000ull

static volatile sig_atomic_t report_requested, stop_requested;

static void on_usr1(int sig) { (void)sig; report_requested = 1; }
static void on_term(int sig) { (void)sig; stop_requested = 1; }

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int parse_list(char *text, long *out, int max)
{
	int n = 0;
	for (char *tok = strtok(text, ","); tok && n < max; tok = strtok(NULL, ","))
		out[n++] = strtol(tok, NULL, 10);
	return n;
}

static int echo;
static struct sockaddr_in peers[VLEN];

/* Sends each received datagram back where it came from, from the socket it arrived on. */
static void echo_back(int fd, struct mmsghdr *msgs, int got)
{
	struct mmsghdr out[VLEN];
	struct iovec iov[VLEN];

	memset(out, 0, sizeof(out[0]) * got);
	for (int k = 0; k < got; k++) {
		iov[k].iov_base = msgs[k].msg_hdr.msg_iov->iov_base;
		iov[k].iov_len = msgs[k].msg_len;
		out[k].msg_hdr.msg_name = &peers[k];
		out[k].msg_hdr.msg_namelen = msgs[k].msg_hdr.msg_namelen;
		out[k].msg_hdr.msg_iov = &iov[k];
		out[k].msg_hdr.msg_iovlen = 1;
	}
	for (int sent = 0; sent < got;) {
		int n = sendmmsg(fd, out + sent, got - sent, 0);
		if (n <= 0)
			return;
		sent += n;
	}
}

static void drain(int fd, struct mmsghdr *msgs, uint64_t *pkts, uint64_t *bytes, int max_rounds)
{
	for (int round = 0; round < max_rounds; round++) {
		if (echo)
			for (int k = 0; k < VLEN; k++)
				msgs[k].msg_hdr.msg_namelen = sizeof(peers[k]);
		int got = recvmmsg(fd, msgs, VLEN, MSG_DONTWAIT, NULL);
		if (got <= 0)
			return;
		*pkts += got;
		for (int k = 0; k < got; k++)
			*bytes += msgs[k].msg_len;
		if (echo)
			echo_back(fd, msgs, got);
		if (got < VLEN)
			return;
	}
}

int main(int argc, char **argv)
{
	long ports[MAX_GW], weights[MAX_GW];
	int nports = 0, nweights = 0, cpu = -1, reg_port = 0, rcvbuf = 16 << 20, poll_us = 0, opt;
	const char *bind_ip = "0.0.0.0";

	while ((opt = getopt(argc, argv, "p:w:r:b:c:R:i:e")) != -1) {
		switch (opt) {
		case 'p': nports = parse_list(optarg, ports, MAX_GW); break;
		case 'w': nweights = parse_list(optarg, weights, MAX_GW); break;
		case 'r': reg_port = atoi(optarg); break;
		case 'b': bind_ip = optarg; break;
		case 'c': cpu = atoi(optarg); break;
		case 'R': rcvbuf = atoi(optarg); break;
		case 'i': poll_us = atoi(optarg); break;
		case 'e': echo = 1; break;
		default:
			fprintf(stderr, "usage: %s -p P1,P2 [-w W1,W2 -r REGPORT] [-b IP] [-c CPU] [-R RCVBUF] [-i POLL_US] [-e]\n", argv[0]);
			return 2;
		}
	}
	if (nports == 0 || (reg_port && nweights != nports)) {
		fprintf(stderr, "need ports (and one weight per port with -r)\n");
		return 2;
	}
	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set) != 0)
			perror("sched_setaffinity");
	}
	signal(SIGUSR1, on_usr1);
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);

	int fds[MAX_GW];
	uint64_t pkts[MAX_GW] = { 0 }, bytes[MAX_GW] = { 0 };
	int ep = epoll_create1(0);
	for (int i = 0; i < nports; i++) {
		struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(ports[i]) };
		inet_pton(AF_INET, bind_ip, &addr.sin_addr);
		fds[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
		/* Same large buffer for every system, so loss reflects throughput, not buffer size. */
		if (setsockopt(fds[i], SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) != 0)
			setsockopt(fds[i], SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
		if (bind(fds[i], (struct sockaddr *)&addr, sizeof(addr)) != 0) {
			fprintf(stderr, "bind port %ld: %s\n", ports[i], strerror(errno));
			return 1;
		}
		/* Registered also when draining on a timer, as a gateway daemon's sockets would be: each
		 * datagram then pays the wake-up callback, which also keeps the injected rate within
		 * what one gateway CPU drains without loss (without it, RcvbufErrors above ~0.6 Mpps). */
		struct epoll_event ev = { .events = EPOLLIN, .data.u32 = i };
		epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
	}

	static char bufs[VLEN][2048];
	struct iovec iov[VLEN];
	struct mmsghdr msgs[VLEN];
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < VLEN; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = sizeof(bufs[i]);
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
		if (echo)
			msgs[i].msg_hdr.msg_name = &peers[i];
	}

	struct sockaddr_in reg = { .sin_family = AF_INET, .sin_port = htons(reg_port) };
	inet_pton(AF_INET, "127.0.0.1", &reg.sin_addr);
	uint64_t next_heartbeat = 0;

	printf("ready\n");
	fflush(stdout);
	struct epoll_event events[MAX_GW];
	for (;;) {
		if (reg_port && now_ns() >= next_heartbeat) {
			/* Registration = the weight as u32 big-endian, sent from the gateway socket itself. */
			for (int i = 0; i < nports; i++) {
				uint32_t w = htonl((uint32_t)weights[i]);
				sendto(fds[i], &w, sizeof(w), 0, (struct sockaddr *)&reg, sizeof(reg));
			}
			next_heartbeat = now_ns() + HEARTBEAT_NS;
		}
		if (report_requested || stop_requested) {
			report_requested = 0;
			printf("counts");
			for (int i = 0; i < nports; i++)
				printf(" %ld:%llu:%llu", ports[i], (unsigned long long)pkts[i], (unsigned long long)bytes[i]);
			printf("\n");
			fflush(stdout);
			if (stop_requested)
				return 0;
		}
		if (poll_us > 0) {
			/* Timer-driven draining: nobody sleeps on the sockets, so the sender's CPU never
			 * pays for wake-ups and the batches do not depend on wake-up timing. */
			struct timespec pause = { .tv_sec = 0, .tv_nsec = poll_us * 1000L };
			nanosleep(&pause, NULL);
			for (int i = 0; i < nports; i++)
				drain(fds[i], msgs, &pkts[i], &bytes[i], 1 << 20);
			continue;
		}
		int n = epoll_wait(ep, events, MAX_GW, 50);
		for (int e = 0; e < n; e++) {
			int i = events[e].data.u32;
			/* Bounded drain per wakeup keeps one busy socket from starving the others. */
			drain(fds[i], msgs, &pkts[i], &bytes[i], 16);
		}
	}
}
