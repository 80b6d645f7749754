"""Full-catalog softmax cross-entropy without materialising the (M, N) logits.

The catalog is processed in tiles of rows x items small enough to stay in the CPU cache: each
tile's logits are computed, shifted by their row maximum and exponentiated while in cache, and
kept in a reused tile-major workspace; a second pass feeds them to the gradient matmuls, with the
softmax normalisation exp(max - lse) applied to the small (rows x D) operands, so the (rows x items)
tiles see one elementwise pass in all (no recomputed matmul, no second exp). The second pass runs
as batched matmuls over all full tiles at once (one call each for the hidden and the item
gradients, instead of a Python loop of small matmuls, products and sums per tile). The loss is
a scalar, so the gradients are built in the forward pass and backward only rescales them.
Each tile's matmul (inner size only D = 64) writes into cache-sized, already-mapped memory:
freshly allocated (rows x 55k) logits were the bottleneck (page faults and memory writes).
Under bfloat16 autocast the three catalog matmuls and the exponentials run in bfloat16 (CPUs
with AMX or AVX512-BF16, and GPUs, multiply bf16 several times faster than fp32; on other CPUs
bf16 is much slower, so it is opt-in), while the row maxima, sums, log-sum-exp, the target logits
and every gradient accumulator stay in fp32.
``full_ce`` in losses.py is the plain reference; tests pin that both agree (fp32 exactly, bf16
within its rounding).
"""

from __future__ import annotations

from typing import Any

import torch

from seqrec.models.base import score_tile

ROW_CHUNK = 512
ITEM_TILE = 512
_FLOOR = -3.0e38  # a tile whose row is all -inf (only the padding column) keeps a finite maximum

_WORKSPACE: dict[str, torch.Tensor] = {}


def _workspace(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reused buffer per name: a fresh 100 MB tensor per step costs tens of ms in page faults.
    Grows to the largest shape asked for and hands out a view of its front."""
    size = 1
    for n in shape:
        size *= n
    buf = _WORKSPACE.get(name)
    if buf is None or buf.numel() < size or buf.dtype != dtype or buf.device != device:
        buf = _WORKSPACE[name] = torch.empty(size, dtype=dtype, device=device)
    return buf[:size].view(shape)


def _tiles(n: int, tile: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + tile, n)) for lo in range(0, n, tile)]


class _TiledCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, tile: int, compute: torch.dtype) -> torch.Tensor:
        need_grad = any(ctx.needs_input_grad[:3])
        grad_h = torch.zeros_like(hidden) if need_grad else None
        grad_w = torch.zeros_like(weight) if need_grad else None
        grad_b = torch.zeros_like(bias) if need_grad and bias is not None else None
        total = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
        tiles = _tiles(weight.shape[0], tile)
        w_c = weight.to(compute)  # the matmul operands (a no-op in fp32)
        b_c = bias.to(compute) if bias is not None else None
        for s in range(0, hidden.shape[0], ROW_CHUNK):
            h, t = hidden[s : s + ROW_CHUNK], targets[s : s + ROW_CHUNK]  # (C, D), (C,)
            h_c = h.to(compute)
            # Tile-major: each (C x tile) block is contiguous, written once by the matmul while it
            # is in cache, exponentiated there, and read back once by the gradient matmuls.
            blocks = _workspace("tiles", (len(tiles), h.shape[0], tile), compute, h.device)
            tile_max, tile_sum = _exp_tiles(blocks, h_c, w_c, b_c, tiles)
            top = tile_max.amax(0)  # (C,)
            lse = top + torch.log((tile_sum * torch.exp(tile_max - top)).sum(0))
            target_logit = (h * weight[t]).sum(1) + (bias[t] if bias is not None else 0.0)
            total += (lse - target_logit).sum()
            if grad_h is None or grad_w is None:
                continue
            # softmax = e * exp(m - lse): a per-row factor per tile that scales the (C, D) operands
            # instead of the (C, tile) blocks; the one-hot target is subtracted once below.
            _add_softmax_grads(blocks, torch.exp(tile_max - lse), h, w_c, tiles,
                               grad_h[s : s + h.shape[0]], grad_w, grad_b)
            grad_h[s : s + h.shape[0]].sub_(weight[t])
            grad_w.index_add_(0, t, h, alpha=-1.0)
            if grad_b is not None:
                grad_b.index_add_(0, t, torch.ones_like(t, dtype=grad_b.dtype), alpha=-1.0)
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
            None,
        )


def _exp_tiles(blocks: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               tiles: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill ``blocks[i]`` with exp(logits - m) of tile i, m its row maximum; return m and the row sums,
    both (tiles, C) in fp32. The columns of a partial last tile beyond the catalog are left untouched."""
    tile_max = torch.empty(len(tiles), h.shape[0], dtype=blocks.dtype, device=h.device)
    tile_sum = torch.empty(len(tiles), h.shape[0], dtype=torch.float32, device=h.device)
    for i, (lo, hi) in enumerate(tiles):
        logits = score_tile(blocks[i, :, : hi - lo], h, weight, bias, lo, hi)
        m = torch.amax(logits, 1, out=tile_max[i]).clamp_(min=_FLOOR)  # finite: exp(-inf - m) = 0
        torch.sum(logits.sub_(m[:, None]).exp_(), 1, dtype=torch.float32, out=tile_sum[i])
    return tile_max.float(), tile_sum


def _add_softmax_grads(blocks: torch.Tensor, scales: torch.Tensor, h: torch.Tensor, weight: torch.Tensor,
                       tiles: list[tuple[int, int]], grad_h: torch.Tensor, grad_w: torch.Tensor,
                       grad_b: torch.Tensor | None) -> None:
    """grad_h += softmax @ W, grad_w += softmax.T @ h (and grad_b += column sums of softmax), with
    softmax of tile i = blocks[i] * scales[i][:, None]. All full tiles in one batched matmul each, a
    partial last tile on its own. ``weight`` and ``blocks`` are in the compute dtype, the rest fp32."""
    tile, d, c, dt = blocks.shape[2], h.shape[1], h.shape[0], blocks.dtype
    full = sum(1 for lo, hi in tiles if hi - lo == tile)
    if full:
        e, sc = blocks[:full], scales[:full]  # (F, C, tile), (F, C)
        hs = torch.mul(h[None], sc[:, :, None], out=_workspace("hs", (full, c, d), dt, h.device))
        gw = grad_w[: full * tile].view(full, tile, d)
        if dt == grad_w.dtype:
            gw.baddbmm_(e.transpose(1, 2), hs)
        else:  # bf16 products, accumulated in fp32
            gw.add_(torch.bmm(e.transpose(1, 2), hs, out=_workspace("gw", (full, tile, d), dt, h.device)))
        prod = torch.bmm(e, weight[: full * tile].reshape(full, tile, d),
                         out=_workspace("prod", (full, c, d), dt, h.device))  # (F, C, D)
        grad_h.add_(torch.sum(prod.mul_(sc[:, :, None]), 0, dtype=grad_h.dtype))
        if grad_b is not None:
            grad_b[: full * tile].view(full, tile).add_(torch.bmm(sc[:, None, :].to(dt), e).squeeze(1))
    for i, (lo, hi) in enumerate(tiles[full:], start=full):
        # contiguous: torch 2.13's CPU bf16 matmul returns NaN for this strided column slice
        e, scale = blocks[i, :, : hi - lo].contiguous(), scales[i][:, None]
        grad_h.addcmul_((e @ weight[lo:hi]).to(grad_h.dtype), scale)
        grad_w[lo:hi].add_(e.T @ (h * scale).to(dt))
        if grad_b is not None:
            grad_b[lo:hi].add_(e.T @ scales[i].to(dt))


def chunked_ce(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
               chunk: int = ITEM_TILE) -> torch.Tensor:
    """Mean cross-entropy of ``targets`` under ``softmax(hidden @ weight.T + bias)``; column 0 excluded.

    hidden (M, D), weight (N + 1, D), bias (N + 1,) or None, targets (M,) in 1..N; ``chunk`` is
    the item tile size. Under bfloat16 autocast the catalog matmuls run in bf16 (see the module
    docstring); the loss and the gradients are in the weights' precision either way.
    """
    dtype = weight.dtype
    device = hidden.device.type
    bf16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16
    compute = torch.bfloat16 if bf16 and dtype == torch.float32 else dtype
    hidden = hidden.to(dtype)  # under autocast the hidden state may be bf16
    with torch.autocast(device, enabled=False):  # the dtypes are chosen here, op by op
        out: torch.Tensor = _TiledCE.apply(hidden, weight, bias.to(dtype) if bias is not None else None, targets,
                                           chunk, compute)
    return out
