"""Compiles the benchmark-only BPF sources (bench/bpf/*.bpf.c) with the Makefile's own
clang and BPF_CFLAGS, into a temporary directory: no object file is ever committed."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = REPO / "bench" / "bpf"


def makefile_compiler() -> list[str]:
    """`$(CLANG) $(BPF_CFLAGS)` as the Makefile expands them, so the flags never drift."""
    rule = "print-bpf-compiler: ; @echo $(CLANG) $(BPF_CFLAGS)"
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(REPO), f"--eval={rule}", "print-bpf-compiler"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return shlex.split(out.strip())


def build_objects(out_dir: Path) -> dict[str, Path]:
    """Compiles every bench/bpf/*.bpf.c; returns {program name (file stem): object path}."""
    compiler = makefile_compiler()
    objects: dict[str, Path] = {}
    for source in sorted(SOURCES.glob("*.bpf.c")):
        name = source.name.removesuffix(".bpf.c")
        target = out_dir / f"{name}.bpf.o"
        # run from the repository root: the flags hold -I. -Ikernel and map its path to "."
        result = subprocess.run(
            [*compiler, "-c", str(source.relative_to(REPO)), "-o", str(target)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"compiling {source.name} failed:\n{result.stderr}")
        objects[name] = target
    return objects
