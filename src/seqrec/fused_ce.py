"""Full-catalog softmax cross-entropy without materialising the (M, N) logits.

The catalog is processed in tiles of rows x items small enough to stay in the CPU cache:
a first pass finds each row's log-sum-exp online, a second recomputes each tile's logits and
forms the softmax gradient there. The loss is a scalar, so the gradients are built in the
forward pass and backward only rescales them. Writing a (rows x 55k) logits block to memory
was the bottleneck (the matmul has an inner size of only D = 64); tiling keeps it in cache.
``full_ce`` in losses.py is the plain reference; a test pins that both agree.
"""

from __future__ import annotations

from typing import Any

import torch

ROW_CHUNK = 256
ITEM_TILE = 2048


def _tile_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
    logits = h @ weight[lo:hi].T  # (C, T)
    if bias is not None:
        logits += bias[lo:hi]
    if lo == 0:
        logits[:, 0] = float("-inf")  # padding is never a candidate
    return logits


def _row_lse(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tile: int) -> torch.Tensor:
    """(C,) log-sum-exp over the catalog, accumulated tile by tile (online softmax)."""
    run_max = torch.full((h.shape[0],), float("-inf"), dtype=h.dtype, device=h.device)
    run_sum = torch.zeros_like(run_max)
    for lo in range(0, weight.shape[0], tile):
        logits = _tile_logits(h, weight, bias, lo, lo + tile)
        new_max = torch.maximum(run_max, logits.max(1).values).clamp_min(torch.finfo(h.dtype).min)
        run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(logits - new_max[:, None]).sum(1)
        run_max = new_max
    return run_max + torch.log(run_sum)


class _TiledCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, tile: int) -> torch.Tensor:
        need_grad = any(ctx.needs_input_grad[:3])
        grad_h = torch.zeros_like(hidden) if need_grad else None
        grad_w = torch.zeros_like(weight) if need_grad else None
        grad_b = torch.zeros_like(bias) if need_grad and bias is not None else None
        total = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
        for s in range(0, hidden.shape[0], ROW_CHUNK):
            h, t = hidden[s : s + ROW_CHUNK], targets[s : s + ROW_CHUNK]  # (C, D), (C,)
            target_logit = (h * weight[t]).sum(1) + (bias[t] if bias is not None else 0.0)
            lse = _row_lse(h, weight, bias, tile)  # (C,)
            total += (lse - target_logit).sum()
            if grad_h is None or grad_w is None:
                continue
            rows = torch.arange(len(t), device=t.device)
            for lo in range(0, weight.shape[0], tile):
                probs = torch.exp_(_tile_logits(h, weight, bias, lo, lo + tile).sub_(lse[:, None]))  # (C, T)
                inside = (t >= lo) & (t < lo + tile)
                probs[rows[inside], t[inside] - lo] -= 1.0  # softmax minus one-hot
                grad_h[s : s + ROW_CHUNK] += probs @ weight[lo : lo + tile]
                grad_w[lo : lo + tile].addmm_(probs.T, h)
                if grad_b is not None:
                    grad_b[lo : lo + tile] += probs.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.n_rows = hidden.shape[0]
        return total / max(hidden.shape[0], 1)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_out / max(ctx.n_rows, 1)
        return (
            grad_h * scale if grad_h is not None else None,
            grad_w * scale if grad_w is not None else None,
            grad_b * scale if grad_b is not None else None,
            None,
            None,
        )


def chunked_ce(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
               chunk: int = ITEM_TILE) -> torch.Tensor:
    """Mean cross-entropy of ``targets`` under ``softmax(hidden @ weight.T + bias)``; column 0 excluded.

    hidden (M, D), weight (N + 1, D), bias (N + 1,) or None, targets (M,) in 1..N; ``chunk`` is
    the item tile size.
    """
    dtype = weight.dtype
    hidden = hidden.to(dtype)  # under autocast the hidden state may be bf16
    # The catalog softmax runs in the weights' precision: autocast does not cover in-place addmm_.
    with torch.autocast(hidden.device.type, enabled=False):
        out: torch.Tensor = _TiledCE.apply(hidden, weight, bias.to(dtype) if bias is not None else None, targets,
                                           chunk)
    return out
