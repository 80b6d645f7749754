"""The optimizer: AdamW over parameter groups (weight decay on weight matrices only)."""

from __future__ import annotations

from typing import Any

import torch

from seqrec.train.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: never on embeddings, biases or norms."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            skip = (isinstance(module, torch.nn.Embedding | torch.nn.LayerNorm) or p.dim() < 2
                    or "norm" in module_name.lower() or "emb" in name)
            (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the parameter groups above; the fused kernel (one pass per tensor instead of a dozen
    elementwise ops: the 3.5M-row item table made the plain update ~7% of a Beauty step on CPU) where
    every parameter is a float tensor on a device that has it. Same update up to float rounding."""
    groups = param_groups(model, cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)
