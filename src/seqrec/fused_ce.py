"""Full-catalog softmax cross-entropy without materialising the (M, N) logits.

Rows are processed in chunks; each chunk's softmax gradient is formed in the forward pass
(the loss is a scalar, so backward only rescales), which keeps memory at O(chunk x N) and
saves the logits round trip through memory. ``full_ce`` in losses.py is the plain reference;
a test pins that both give the same loss and gradients.
"""

from __future__ import annotations

from typing import Any

import torch


class _ChunkedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk: int) -> torch.Tensor:
        M = hidden.shape[0]
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_grad else None
        grad_w = torch.zeros_like(weight) if need_grad else None
        grad_b = torch.zeros_like(bias) if need_grad and bias is not None else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, M, chunk):
            h = hidden[s : s + chunk]  # (C, D)
            t = targets[s : s + chunk]  # (C,)
            logits = (h @ weight.T).float()  # (C, N + 1)
            if bias is not None:
                logits += bias.float()
            logits[:, 0] = float("-inf")
            lse = torch.logsumexp(logits, dim=1)  # (C,)
            total += (lse - logits.gather(1, t[:, None])[:, 0]).sum()
            if grad_h is None:
                continue
            probs = torch.exp_(logits.sub_(lse[:, None]))  # softmax, in place
            probs[torch.arange(len(t), device=t.device), t] -= 1.0
            probs = probs.to(hidden.dtype)
            grad_h[s : s + chunk] = probs @ weight
            assert grad_w is not None
            grad_w.addmm_(probs.T, h)
            if grad_b is not None:
                grad_b += probs.sum(0).to(grad_b.dtype)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.M = M
        return total / max(M, 1)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_out / max(ctx.M, 1)
        return (
            grad_h * scale if grad_h is not None else None,
            grad_w * scale if grad_w is not None else None,
            grad_b * scale if grad_b is not None else None,
            None,
            None,
        )


def chunked_ce(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
               chunk: int = 512) -> torch.Tensor:
    """Mean cross-entropy of ``targets`` under ``softmax(hidden @ weight.T + bias)``; column 0 excluded.

    hidden (M, D), weight (N + 1, D), bias (N + 1,) or None, targets (M,) in 1..N.
    """
    if hidden.dtype != weight.dtype:  # under autocast the hidden state may be bf16
        hidden = hidden.to(weight.dtype)
    out: torch.Tensor = _ChunkedCE.apply(hidden, weight, bias, targets, chunk)
    return out
