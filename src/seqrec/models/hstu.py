"""HSTU, the Hierarchical Sequential Transduction Unit (Zhai et al., ICML 2024, "Actions Speak
Louder than Words"): pointwise SiLU attention (no softmax), gating by U, and a learned relative
attention bias over positions and, when timestamps are given, over log-bucketed time gaps.

A plain PyTorch reference implementation; a fused kernel can come later if a test proves it equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.items.tower import ItemTower, TowerConfig
from seqrec.models.base import SequenceModel
from seqrec.models.layers import AttentionConfig, attention_mask, positions_from_start
from seqrec.models.sasrec import init_weights
from seqrec.settings import setting


@dataclass(frozen=True)
class HSTUConfig(AttentionConfig):
    attn_dim: int | None = setting(None, "per-head query/key size (default: dim / n_heads)", low=1)
    time_buckets: int = setting(64, "log-spaced buckets of the time gap |t_i - t_j| in seconds", low=1)
    use_time: bool = setting(False, "add the relative time bias when the log has timestamps")


class RelativeBias(nn.Module):
    """Learned bias by query-key distance (positions) and by log time gap (when times exist)."""

    def __init__(self, max_len: int, time_buckets: int) -> None:
        super().__init__()
        self.max_len, self.time_buckets = max_len, time_buckets
        self.pos = nn.Parameter(torch.zeros(max_len))
        self.time = nn.Parameter(torch.zeros(time_buckets))

    def forward(self, items: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        pos = positions_from_start(items)  # (B, L)
        dist = (pos[:, :, None] - pos[:, None, :]).abs().clamp(max=self.max_len - 1)  # (B, L, L)
        bias = self.pos[dist]
        if times is not None:
            gap = (times[:, :, None] - times[:, None, :]).abs().float()  # (B, L, L) seconds
            bucket = torch.log1p(gap).div(math.log(2.0)).long().clamp(max=self.time_buckets - 1)
            bias = bias + self.time[bucket]
        return bias[:, None]  # (B, 1, L, L): shared by the heads


class HSTULayer(nn.Module):
    def __init__(self, dim: int, n_heads: int, attn_dim: int, dropout: float, max_len: int) -> None:
        super().__init__()
        self.n_heads, self.attn_dim, self.head_dim, self.max_len = n_heads, attn_dim, dim // n_heads, max_len
        self.norm_in = nn.LayerNorm(dim)
        self.uvqk = nn.Linear(dim, 2 * dim + 2 * n_heads * attn_dim)  # f1: U, V, Q, K in one matmul
        self.norm_attn = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)  # f2
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        H = self.n_heads
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x))).split(
            [D, D, H * self.attn_dim, H * self.attn_dim], dim=2)
        q = q.view(B, L, H, self.attn_dim).transpose(1, 2)  # (B, H, L, Dqk)
        k = k.view(B, L, H, self.attn_dim).transpose(1, 2)
        v = v.view(B, L, H, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)
        # Pointwise attention: SiLU instead of softmax, scaled by a fixed length so that the
        # weights do not depend on how many items (or how much padding) the window holds.
        weights = F.silu(q @ k.transpose(-1, -2) + bias) / self.max_len * mask  # (B, H, L, L)
        y = (weights @ v).transpose(1, 2).reshape(B, L, D)
        return x + self.drop(self.out(self.norm_attn(y) * u))


class HSTUModel(SequenceModel):
    name = "hstu"
    causal = True

    def __init__(self, config: HSTUConfig, tower: ItemTower | None = None) -> None:
        super().__init__()
        self.config = c = config
        self.tower = tower or ItemTower(TowerConfig(c.n_items, c.dim))
        self.drop = nn.Dropout(c.dropout)
        self.bias = RelativeBias(c.max_len, c.time_buckets)
        attn_dim = c.attn_dim or c.dim // c.n_heads
        self.layers = nn.ModuleList(
            HSTULayer(c.dim, c.n_heads, attn_dim, c.dropout, c.max_len) for _ in range(c.n_layers))
        self.final_norm = nn.LayerNorm(c.dim)
        self.apply(init_weights)
        self.setup_similarity(c)  # cosine / temperature: generative-recommenders' l2-norm output

    def encode(self, x: torch.Tensor, items: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        real = (items > 0).unsqueeze(-1)  # (B, L, 1)
        x = self.drop(x * math.sqrt(self.config.dim)) * real
        mask = attention_mask(items, causal=True) & (items > 0)[:, None, None, :]  # no self-loop on pads
        bias = self.bias(items, times if self.config.use_time else None)
        for layer in self.layers:
            x = layer(x, mask, bias) * real
        return self.final_norm(x)
