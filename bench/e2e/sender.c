/* Paced or unpaced UDP blaster: sendmmsg batches of small datagrams to one IPv4 address:port
 * on a connected socket, for a fixed duration. Prints "sent=N elapsed_ns=T errors=E". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 64

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until_ns(uint64_t deadline)
{
	struct timespec ts = { .tv_sec = deadline / 1000000000ull, .tv_nsec = deadline % 1000000000ull };
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static void usage(const char *prog)
{
	fprintf(stderr, "usage: %s -d IPV4 -p PORT [-s PAYLOAD] [-r PPS (0=unpaced)] [-t SECONDS] [-b BATCH] [-c CPU]\n", prog);
	exit(2);
}

int main(int argc, char **argv)
{
	const char *dst_ip = NULL;
	int port = 0, payload = 32, batch = 32, cpu = -1, opt;
	double rate = 0, seconds = 3;

	while ((opt = getopt(argc, argv, "d:p:s:r:t:b:c:")) != -1) {
		switch (opt) {
		case 'd': dst_ip = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 's': payload = atoi(optarg); break;
		case 'r': rate = atof(optarg); break;
		case 't': seconds = atof(optarg); break;
		case 'b': batch = atoi(optarg); break;
		case 'c': cpu = atoi(optarg); break;
		default: usage(argv[0]);
		}
	}
	if (!dst_ip || port <= 0 || port > 65535 || payload < 1 || payload > 1400 || batch < 1)
		usage(argv[0]);
	if (batch > MAX_BATCH)
		batch = MAX_BATCH;
	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set) != 0)
			perror("sched_setaffinity");
	}
	/* Default 50 us timer slack would make paced batches late and bursty. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);

	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) { perror("socket"); return 1; }
	struct sockaddr_in dst = { .sin_family = AF_INET, .sin_port = htons(port) };
	if (inet_pton(AF_INET, dst_ip, &dst.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
	if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) != 0) { perror("connect"); return 1; }

	/* Paced mode keeps the full batch (timed per batch): smaller batches would make the
	 * sender itself slower when paced than unpaced. */
	static char buf[MAX_BATCH][1500];
	struct iovec iov[MAX_BATCH];
	struct mmsghdr msgs[MAX_BATCH];
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < MAX_BATCH; i++) {
		memset(buf[i], 'x', payload);
		iov[i].iov_base = buf[i];
		iov[i].iov_len = payload;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}

	uint64_t sent = 0, errors = 0, seq = 0;
	uint64_t start = now_ns();
	uint64_t end = start + (uint64_t)(seconds * 1e9);
	double ns_per_pkt = rate > 0 ? 1e9 / rate : 0;
	for (;;) {
		uint64_t t = now_ns();
		if (t >= end)
			break;
		if (rate > 0) {
			/* Schedule from the start time so a late batch is caught up, not lost. */
			uint64_t due = start + (uint64_t)(sent * ns_per_pkt);
			if (due > end)
				break;
			if (due > t)
				sleep_until_ns(due);
		}
		for (int i = 0; i < batch; i++, seq++)
			memcpy(buf[i], &seq, sizeof(seq) < (size_t)payload ? sizeof(seq) : (size_t)payload);
		int n = sendmmsg(fd, msgs, batch, 0);
		if (n < 0) {
			/* ECONNREFUSED comes from an ICMP unreachable of an earlier datagram: keep going. */
			errors++;
			continue;
		}
		sent += n;
	}
	uint64_t elapsed = now_ns() - start;
	printf("sent=%llu elapsed_ns=%llu errors=%llu\n", (unsigned long long)sent,
	       (unsigned long long)elapsed, (unsigned long long)errors);
	return 0;
}
