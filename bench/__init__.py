"""Benchmarks of ebpflb: `python -m bench.micro` (in-kernel, BPF_PROG_TEST_RUN) and bench/e2e."""
