"""What a result file says about the machine it was measured on: speeds compare only within one host."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def describe() -> str:
    """E.g. 'x86_64, Intel(R) Xeon(R) Processor [avx2 avx512f avx512_bf16 amx_bf16], 2 threads, torch 2.13.0+cpu'."""
    import torch

    return f"{platform.machine()}, {cpu()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def cpu() -> str:
    """The CPU model and the vector/matrix extensions that decide fp32 and bf16 matmul speed."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}
    flags = set(fields.get("flags", "").split())
    isa = " ".join(f for f in _ISA_FLAGS if f in flags)
    return f"{fields.get('model name', 'unknown CPU')} [{isa}]"


def threads(text: str) -> int:
    """argparse type for --threads: a positive whole number (torch rejects 0 with a traceback)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number of threads, got {text!r}")
    return value
