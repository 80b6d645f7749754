"""Choosing the torch device: a pure lookup, no side effects on torch's settings."""

from __future__ import annotations

import torch

from seqrec.errors import SeqrecError


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; anything else must name a device torch knows."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SeqrecError(f"unknown device {name!r}; use auto, cpu or cuda") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SeqrecError(f"device {name!r} asked for, but this torch build sees no CUDA device; use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SeqrecError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device
