# ebpflb: build the shipped XDP object, set up a venv, test, benchmark, demo.
CLANG ?= clang
LLVM_STRIP ?= llvm-strip
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OBJ := ebpflb/bpf/ebpflb.bpf.o
BPF_SRCS := $(wildcard kernel/*.c kernel/*.h kernel/packet/*.h) vmlinux.h
# Paths are made relative so the object is byte-identical wherever it is built.
BPF_CFLAGS := -g -O2 -Wall -target bpf -mcpu=v3 -D__TARGET_ARCH_x86 \
	-fdebug-prefix-map=$(CURDIR)=. -I. -Ikernel
DEBIAN_PACKAGES := clang llvm libbpf-dev bpftool xdp-tools iproute2 ethtool socat dnsmasq-base bind9-dnsutils \
	prometheus systemd curl

.PHONY: all check-object deps venv lint test unit bench bench-e2e demo clean

all: $(OBJ)

$(OBJ): $(BPF_SRCS)
	$(CLANG) $(BPF_CFLAGS) -c kernel/ebpflb.bpf.c -o $@
	$(LLVM_STRIP) -g $@

# Rebuilds the object from kernel/ in a temporary folder; fails if the shipped one differs.
check-object:
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	$(CLANG) $(BPF_CFLAGS) -c kernel/ebpflb.bpf.c -o $$tmp/ebpflb.bpf.o && \
	$(LLVM_STRIP) -g $$tmp/ebpflb.bpf.o && \
	if cmp -s $$tmp/ebpflb.bpf.o $(OBJ); then echo "check-object: $(OBJ) matches kernel/"; \
	else echo "check-object: $(OBJ) is stale: run make and commit it" >&2; exit 1; fi

# Debian packages the build and the tests need (installed only when missing).
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(PY) -m ruff check ebpflb tests bench
	$(PY) -m mypy ebpflb

test: deps venv check-object lint
	$(PY) -m pytest tests

# tests/unit only: needs no root and loads nothing into the kernel.
unit: venv
	$(PY) -m pytest tests/unit -q

bench: deps venv
	$(PY) -m bench.micro

bench-e2e: deps venv
	$(PY) bench/e2e/run.py $(E2E_ARGS)

demo: deps venv
	$(PY) -m ebpflb.demo

clean:
	rm -rf $(VENV) build *.egg-info
