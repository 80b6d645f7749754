"""Pieces shared by the self-attention encoders."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.models.base import NeuralConfig
from seqrec.settings import setting


def positions_from_start(items: torch.Tensor) -> torch.Tensor:
    """(B, L) position of each real item counted from the user's first item in the window.

    Counting from the first real item (not from the padded left edge) makes the encoders
    invariant to how much left padding a batch adds. Padding positions get 0.
    """
    L = items.shape[1]
    lengths = (items > 0).sum(1, keepdim=True)  # (B, 1)
    return (torch.arange(L, device=items.device)[None, :] - (L - lengths)).clamp(min=0)


def positions_from_end(items: torch.Tensor) -> torch.Tensor:
    """(B, L) position of each real item counted back from the most recent one (0), as RecTools'
    "inverse" positional encoding and the original SASRec's left-padded windows do.

    Inputs are left-padded with the most recent item last, so the count is the distance to the
    last column; padding positions get 0. Invariant to left padding, like
    :func:`positions_from_start`, but the latest item always has the same position, whatever
    the history's length."""
    L = items.shape[1]
    back = torch.arange(L - 1, -1, -1, device=items.device)[None, :]  # L - 1 ... 0
    return torch.where(items > 0, back, 0)


POSITIONS = ("start", "end")


@dataclass(frozen=True)
class AttentionConfig(NeuralConfig):
    n_heads: int = setting(1, "attention heads (dim must be divisible by it)", low=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} must be divisible by n_heads {self.n_heads}")


@dataclass(frozen=True)
class TransformerConfig(AttentionConfig):
    ff_dim: int | None = setting(None, "feed-forward width (default: dim for sasrec, 4 x dim for bert4rec)", low=1)
    norm_first: bool = setting(True, "layer norm before each sub-layer (pre-norm); off: after each residual sum")
    positions: str = setting("start", "learned positions counted from the first item in the window (start) or "
                             "back from the most recent one (end)", choices=POSITIONS)


def item_positions(items: torch.Tensor, counted_from: str) -> torch.Tensor:
    """(B, L) positions for a learned position embedding, counted from the window's first item
    (``"start"``) or back from its last (``"end"``)."""
    return positions_from_start(items) if counted_from == "start" else positions_from_end(items)


def attention_mask(items: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, 1, L, L) boolean mask, True = may attend. Real queries never see padding keys;
    every query sees itself, so no row is empty (padding rows are ignored downstream)."""
    L = items.shape[1]
    real = items > 0  # (B, L)
    mask = real[:, None, None, :].expand(-1, 1, L, L)
    if causal:
        mask = mask & torch.ones(L, L, dtype=torch.bool, device=items.device).tril()
    return mask | torch.eye(L, dtype=torch.bool, device=items.device)


NORMS = ("pre", "post", "sasrec")


def causal_window_mean(x: torch.Tensor, real: torch.Tensor, window: int) -> torch.Tensor:
    """(B, L, D) mean of the inputs at positions t - window + 1 .. t that are real, for each t.

    ``real`` (B, L, 1) marks real positions; padding adds nothing to a sum or a count, so the
    result does not depend on how much left padding a batch has, and position t never sees t + 1.
    With left padding (real items last) that is the mean of each position's last ``window`` real
    items. No branch on the length, so an exported graph serves every history length.
    """
    L = x.shape[1]
    r = real.to(x.dtype)
    sums, counts = (x * r).cumsum(1), r.cumsum(1)  # (B, L, D), (B, L, 1)
    sums = sums - F.pad(sums, (0, 0, window, 0))[:, :L]  # minus the sum up to t - window
    counts = counts - F.pad(counts, (0, 0, window, 0))[:, :L]
    return sums / counts.clamp(min=1)


class LowPass(nn.Module):
    """A causal low-pass branch beside attention: the inductive bias of BSARec (Shin et al., AAAI
    2024), which mixes a sequence's low frequencies back into self-attention.

    BSARec filters with a Fourier transform over the whole window, so every position sees the
    future and the amount of left padding changes the result; this branch keeps both contracts by
    taking the low frequencies as the mean of the last ``window`` real inputs. As in BSARec, the
    high frequencies (input minus that mean) are added back with a learned non-negative weight
    per dimension: ``low + beta**2 * (x - low)``. ``weight`` (a) is this branch's share of the
    token-mixing sub-layer: :meth:`mix` returns ``(1 - a) attention + a branch``.
    """

    def __init__(self, dim: int, window: int, dropout: float, weight: float) -> None:
        super().__init__()
        self.window, self.weight = window, weight
        self.beta = nn.Parameter(torch.randn(1, 1, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        low = causal_window_mean(x, real, self.window)
        return self.drop(low + self.beta.square() * (x - low))

    def mix(self, attended: torch.Tensor, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``attended`` (the attention of ``x``) mixed with this branch of ``x``."""
        return (1 - self.weight) * attended + self.weight * self(x, real)


class Block(nn.Module):
    """Transformer block: self-attention then a pointwise feed-forward.

    ``norm`` places the layer norms: ``"pre"`` (before each sub-layer, residuals untouched),
    ``"post"`` (after each residual sum, as in BERT), or ``"sasrec"``, the placement of the
    original SASRec code (Kang & McAuley's, kept by pmixer's PyTorch port and RecTools): queries are
    normalised but keys and values are not, the attention residual adds to the *normalised*
    queries, and the feed-forward residual adds to its normalised input.
    """

    def __init__(self, dim: int, n_heads: int, ff_dim: int, dropout: float, norm: str = "pre",
                 activation: str = "relu", lowpass: float = 0.0, lowpass_window: int = 8) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} must be divisible by n_heads {n_heads}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.n_heads, self.norm, self.dropout = n_heads, norm, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU() if activation == "gelu" else nn.ReLU(),
                                nn.Dropout(dropout), nn.Linear(ff_dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.lowpass = LowPass(dim, lowpass_window, dropout, lowpass) if lowpass > 0 else None

    def attend(self, x: torch.Tensor, mask: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of queries from ``x`` over keys and values from ``kv`` (default: ``x``)."""
        B, L, D = x.shape
        if kv is None:
            q, k, v = self.qkv(x).split(D, dim=2)  # each (B, L, D)
        else:
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x, w[:D], b[:D])
            k, v = F.linear(kv, w[D:], b[D:]).split(D, dim=2)
        q, k, v = (t.view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, L, Dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, L, D)))

    def mix(self, q: torch.Tensor, mask: torch.Tensor, real: torch.Tensor | None,
            kv: torch.Tensor | None = None) -> torch.Tensor:
        """The token-mixing sub-layer: attention, or with a low-pass branch (1 - a) attention + a low-pass."""
        attended = self.attend(q, mask, kv)
        if self.lowpass is None:
            return attended
        if real is None:
            raise ValueError("a block with a low-pass branch needs the real-position mask")
        return self.lowpass.mix(attended, q, real)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """``real`` (B, L, 1) marks real positions; only the low-pass branch needs it."""
        if self.norm == "pre":
            x = x + self.mix(self.norm1(x), mask, real)
            return x + self.drop(self.ff(self.norm2(x)))
        if self.norm == "sasrec":
            q = self.norm1(x)
            h = self.norm2(q + self.mix(q, mask, real, kv=x))
            return h + self.drop(self.ff(h))
        x = self.norm1(x + self.mix(x, mask, real))
        return self.norm2(x + self.drop(self.ff(x)))


# Size presets shared by the attention models: (dim, n_layers, n_heads). Parameter counts also
# grow with the catalog (n_items x dim embeddings); `seqrec train` prints the total.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 1),  # the published SASRec/BERT4Rec setting for Amazon data
    "small": (128, 2, 2),
    "base": (256, 4, 4),
    "large": (512, 8, 8),
    "xl": (1024, 16, 16),
    "xxl": (2048, 24, 16),  # > 1 billion parameters in the blocks alone
}
