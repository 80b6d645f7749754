"""Full-catalog softmax cross-entropy without materialising the (M, N) logits.

The catalog is processed in tiles of rows x items small enough to stay in the CPU cache: each
tile's logits are computed, shifted by their row maximum and exponentiated while in cache, and
kept in a reused workspace; a second pass feeds them to the gradient matmuls, with the softmax
normalisation exp(max - lse) applied to the small (rows x D) operands, so the (rows x items)
tiles see one elementwise pass in all (no recomputed matmul, no second exp). The loss is
a scalar, so the gradients are built in the forward pass and backward only rescales them.
Each tile's matmul (inner size only D = 64) writes into cache-sized, already-mapped memory:
freshly allocated (rows x 55k) logits were the bottleneck (page faults and memory writes).
On CPU the tiles are shared out among the intra-op threads, each running its tiles' small matmuls and
elementwise passes single-threaded (torch ops release the GIL): splitting every 512 x 512 x 64 matmul
and every row reduction across the threads costs a fork/join per op, which at ~200 tiles per chunk
and per pass was a large part of the step. Each tile's item rows of the weight gradient belong to
one thread; the hidden-state gradient is summed over per-thread copies in a fixed order.
``full_ce`` in losses.py is the plain reference; a test pins that both agree. Scores come from
:func:`seqrec.scoring.fill_tile`, the scorer every other path uses.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from typing import Any

import torch

from seqrec.items.tower import ItemTable
from seqrec.scoring import fill_tile
from seqrec.threads import map_on_threads, single_threaded_ops

ROW_CHUNK = 512
ITEM_TILE = 512
ROW_PAD = 64  # bf16 path: row counts rounded up to a multiple of this (ROW_CHUNK is one too)
_FLOOR = -3.0e38  # a tile whose row is all -inf (only the padding column) keeps a finite maximum

_WORKSPACE: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}


def _workspace(rows: int, n_cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reused (rows, n_cols) buffer: a fresh 100 MB tensor per step costs tens of ms in page faults."""
    key = (rows, n_cols, dtype, device)
    buf = _WORKSPACE.get(key)
    if buf is None:
        _WORKSPACE.clear()  # one shape at a time: the catalog size rarely changes within a process
        buf = _WORKSPACE[key] = torch.empty(rows, n_cols, dtype=dtype, device=device)
    return buf


def _tiles(n: int, tile: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + tile, n)) for lo in range(0, n, tile)]


def _n_parts(device: torch.device, parallel: bool) -> int:
    """Threads that each run a share of the tiles (CPU); 1: every op uses all intra-op threads."""
    return torch.get_num_threads() if parallel and device.type == "cpu" else 1


def _exponentiate(which: range, tiles: list[tuple[int, int]], blocks: torch.Tensor, h: torch.Tensor,
                  weight: torch.Tensor, bias: torch.Tensor | None, tile_max: torch.Tensor,
                  tile_sum: torch.Tensor) -> None:
    """Pass 1 over tiles ``which``: blocks[i] = exp(logits - m), m the row maximum; keep m and sum.

    With bf16 blocks the logits, their maximum, exp and sum are fp32 (a per-thread scratch tile), and
    the exp is then stored rounded to bf16 (a copy: torch.exp with a bf16 ``out`` is ~25x slower)."""
    low = blocks.dtype != h.dtype
    scratch = torch.empty(h.shape[0], blocks.shape[2], dtype=h.dtype, device=h.device) if low else None
    for i in which:
        lo, hi = tiles[i]
        store = blocks[i, :, : hi - lo]
        logits = fill_tile(store if scratch is None else scratch[:, : hi - lo], h, ItemTable(weight, bias), lo, hi)
        m = torch.amax(logits, 1, out=tile_max[i]).clamp_(min=_FLOOR)  # finite: exp(-inf - m) = 0
        torch.sum(logits.sub_(m[:, None]).exp_(), 1, out=tile_sum[i])
        if scratch is not None:
            store.copy_(logits)


def _accumulate(part: tuple[range, torch.Tensor], tiles: list[tuple[int, int]], blocks: torch.Tensor,
                h: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, grad_w: torch.Tensor,
                grad_b: torch.Tensor | None) -> None:
    """Pass 2 over tiles ``which`` into this thread's ``grad_h``, ``part = (which, grad_h)``: softmax =
    e * exp(m - lse), a per-row factor that scales the (C, D) operands and products instead of the
    (C, T) tile. ``weight`` is in the blocks' precision (bf16: both gradient matmuls on bf16
    operands, their products added to the fp32 gradients)."""
    which, grad_h = part
    for i in which:
        lo, hi = tiles[i]
        e, scale = blocks[i, :, : hi - lo], scales[i][:, None]
        if e.dtype != h.dtype and hi - lo < blocks.shape[2]:
            e = e.contiguous()  # torch 2.13's CPU bf16 matmul misreads a column slice of a wider buffer
        grad_h.addcmul_(e @ weight[lo:hi], scale)
        _add_product(grad_w[lo:hi], e.T, (h * scale).to(e.dtype))
        if grad_b is not None:
            _add_product(grad_b[lo:hi, None], e.T, scale.to(e.dtype))


def _add_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out += a @ b, in place; a and b may be in a lower precision than out."""
    if a.dtype == out.dtype:
        out.addmm_(a, b)
    else:
        out += a @ b


class _TiledCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, tile: int, low: torch.dtype | None, parallel: bool) -> torch.Tensor:
        need_grad = any(ctx.needs_input_grad[:3])
        n_real = hidden.shape[0]
        if low is not None and n_real % ROW_PAD:
            # oneDNN compiles and caches a bf16 matmul per shape (~12 MB each): with the row count of every
            # batch's last chunk its own shape, memory grew each epoch. Zero rows, excluded below, fix the shapes.
            pad = ROW_PAD - n_real % ROW_PAD
            hidden = torch.cat([hidden, hidden.new_zeros(pad, hidden.shape[1])])
            targets = torch.cat([targets, targets.new_ones(pad)])
        grad_h = torch.zeros_like(hidden) if need_grad else None
        grad_w = torch.zeros_like(weight) if need_grad else None
        grad_b = torch.zeros_like(bias) if need_grad and bias is not None else None
        total = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
        tiles = _tiles(weight.shape[0], tile)
        # Tile-major buffer: each (rows x tile) block is contiguous, written once by the matmul
        # while it is in cache, exponentiated there, and read back once by the gradient matmuls.
        # ``low``: the blocks and the gradient matmuls' operands in that precision (bf16), not the weights'.
        buf = _workspace(len(tiles) * min(ROW_CHUNK, hidden.shape[0]), tile, low or hidden.dtype, hidden.device)
        weight_low = weight.detach().to(low) if low is not None and need_grad else weight
        parts = min(_n_parts(hidden.device, parallel), len(tiles))
        share = [range(k, len(tiles), parts) for k in range(parts)]  # interleaved: the last tile is short
        with single_threaded_ops() if parts > 1 else nullcontext():
            for s in range(0, hidden.shape[0], ROW_CHUNK):
                h, t = hidden[s : s + ROW_CHUNK], targets[s : s + ROW_CHUNK]  # (C, D), (C,)
                c, real = h.shape[0], max(0, min(h.shape[0], n_real - s))  # rows past n_real are padding
                blocks = buf[: len(tiles) * c].view(len(tiles), c, tile)
                tile_max = torch.empty(len(tiles), c, dtype=h.dtype, device=h.device)
                tile_sum = torch.empty(len(tiles), c, dtype=h.dtype, device=h.device)
                map_on_threads(partial(_exponentiate, tiles=tiles, blocks=blocks, h=h, weight=weight, bias=bias,
                                        tile_max=tile_max, tile_sum=tile_sum), share, parts)
                top = tile_max.amax(0)  # (C,)
                lse = top + torch.log((tile_sum * torch.exp(tile_max - top)).sum(0))
                target_logit = (h * weight[t]).sum(1) + (bias[t] if bias is not None else 0.0)
                total += (lse - target_logit)[:real].sum()
                if grad_h is None or grad_w is None:
                    continue
                scales = torch.exp(tile_max - lse)  # (tiles, C)
                scales[:, real:] = 0.0  # padding rows: no weight in any gradient (their hidden rows are zero too)
                gh = [grad_h[s : s + c]] + [torch.zeros_like(h) for _ in share[1:]]  # summed in a fixed order
                map_on_threads(partial(_accumulate, tiles=tiles, blocks=blocks, h=h, weight=weight_low, scales=scales,
                                       grad_w=grad_w, grad_b=grad_b), list(zip(share, gh, strict=True)), parts)
                for extra in gh[1:]:
                    gh[0].add_(extra)
                gh[0].sub_(weight[t])  # the one-hot target, subtracted once
                grad_w.index_add_(0, t, h, alpha=-1.0)
                if grad_b is not None:
                    grad_b.index_add_(0, t[:real], torch.ones_like(t[:real], dtype=grad_b.dtype), alpha=-1.0)
        ctx.save_for_backward(grad_h[:n_real] if grad_h is not None else None, grad_w, grad_b)
        ctx.n_rows = n_real
        return total / max(n_real, 1)

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
            None,
        )


def tiled_ce(query: torch.Tensor, table: ItemTable, targets: torch.Tensor, tile: int = ITEM_TILE,
             bf16_grads: bool = False, parallel: bool = True) -> torch.Tensor:
    """Mean cross-entropy of ``targets`` under ``softmax(query @ weight.T + bias)``; column 0 excluded.

    query (M, D), table (N + 1, D) [+ (N + 1,) bias], targets (M,) in 1..N; ``tile`` is the item
    tile size. ``bf16_grads`` (fp32 weights only): the softmax tiles are stored in bf16 and the two
    gradient matmuls take bf16 operands (AMX / tensor cores; half the workspace), while the logits,
    their maxima, the exp and every sum stay fp32 and the gradients are accumulated in fp32. It
    changes the gradients by about bf16's rounding (~0.4% relative), so it is opt-in. ``parallel``
    (CPU): tiles shared out among the intra-op threads; off, every op uses all of them.
    """
    weight, bias = table
    dtype = weight.dtype
    query = query.to(dtype)  # under autocast the query may be bf16
    low = torch.bfloat16 if bf16_grads and dtype == torch.float32 else None
    # The catalog softmax runs in the weights' precision: autocast does not cover in-place addmm_.
    with torch.autocast(query.device.type, enabled=False):
        out: torch.Tensor = _TiledCE.apply(query, weight, bias.to(dtype) if bias is not None else None, targets,
                                           tile, low, parallel)
    return out
