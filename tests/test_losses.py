"""Each loss against a hand-computed case; sampled softmax over all items equals full softmax."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from seqrec.fused_ce import chunked_ce
from seqrec.losses import LossConfig, NegativeSampler, bce, compute_loss, full_ce, gbce_beta, sampled_softmax
from seqrec.models.base import SequenceEncoder


class Fixed(SequenceEncoder):
    """Scores are exactly ``hidden @ E.T`` with a hand-set E (3 items + padding)."""

    name = "fixed"

    def __init__(self, emb: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.emb = torch.nn.Parameter(emb)
        self.b = None if bias is None else torch.nn.Parameter(bias)

    def item_embeddings(self) -> torch.Tensor:
        return self.emb

    def item_bias(self) -> torch.Tensor | None:
        return self.b


E = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
H = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # logits rows: [1, 0, 1] and [0, 2, 2]
T = torch.tensor([1, 3])


def test_full_ce_hand_computed() -> None:
    want = ((-1 + math.log(2 * math.e + 1)) + (-2 + math.log(1 + 2 * math.e**2))) / 2
    assert full_ce(Fixed(E), H, T).item() == pytest.approx(want, rel=1e-6)
    assert chunked_ce(H, E, None, T, chunk=1).item() == pytest.approx(want, rel=1e-6)


@pytest.fixture
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("row_chunk", [5, 512])  # several row chunks, and one
@pytest.mark.parametrize("tile", [1, 4, 7])  # 1: the first tile holds only the padding column
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("threads", [1, 3], indirect=True)  # 3: tiles shared out among three threads
def test_chunked_ce_matches_plain_loss_and_gradients(row_chunk: int, tile: int, with_bias: bool, threads: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("seqrec.fused_ce.ROW_CHUNK", row_chunk)
    torch.manual_seed(tile)
    emb, bias = torch.randn(30, 8) * 3, torch.randn(30) if with_bias else None
    hidden, targets = torch.randn(17, 8), torch.randint(1, 30, (17,))  # repeated targets too
    m1 = Fixed(emb.clone(), None if bias is None else bias.clone())
    m2 = Fixed(emb.clone(), None if bias is None else bias.clone())
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    l1 = full_ce(m1, h1, targets)
    l2 = chunked_ce(h2, m2.emb, m2.b, targets, chunk=tile)
    (l1 * 3).backward()
    (l2 * 3).backward()
    torch.testing.assert_close(l1, l2)
    pairs = [(h1.grad, h2.grad), (m1.emb.grad, m2.emb.grad)]
    if m1.b is not None and m2.b is not None:
        pairs.append((m1.b.grad, m2.b.grad))
    for a, b in pairs:
        torch.testing.assert_close(a, b)
    assert torch.get_num_threads() == threads  # restored after the tile threads ran single-threaded


@pytest.mark.parametrize("tile", [4, 7])  # 7: the last tile is a column slice of the bf16 workspace
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("threads", [1, 3], indirect=True)
def test_bf16_gradient_matmuls_stay_within_bf16_rounding_of_the_plain_gradients(
        tile: int, with_bias: bool, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("seqrec.fused_ce.ROW_CHUNK", 16)
    torch.manual_seed(tile)
    emb, bias = torch.randn(300, 16), torch.randn(300) if with_bias else None
    hidden, targets = torch.randn(40, 16), torch.randint(1, 300, (40,))
    m1 = Fixed(emb.clone(), None if bias is None else bias.clone())
    m2 = Fixed(emb.clone(), None if bias is None else bias.clone())
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    l1 = full_ce(m1, h1, targets)
    l2 = chunked_ce(h2, m2.emb, m2.b, targets, chunk=tile, bf16_grads=True)
    l1.backward()
    l2.backward()
    assert l2.dtype == torch.float32
    torch.testing.assert_close(l2, l1)  # the loss itself is all fp32: logits, max, exp, sums
    pairs = [(h1.grad, h2.grad), (m1.emb.grad, m2.emb.grad)]
    if m1.b is not None and m2.b is not None:
        pairs.append((m1.b.grad, m2.b.grad))
    for plain, low in pairs:
        assert plain is not None and low is not None and low.dtype == torch.float32
        error = ((low - plain).norm() / plain.norm()).item()
        assert 0.0 < error < 1e-2  # bf16 rounding (2^-9 relative): present, and small
    assert torch.get_num_threads() == threads


def test_sampled_softmax_with_all_items_equals_full_softmax() -> None:
    torch.manual_seed(1)
    model = Fixed(torch.randn(12, 4), torch.randn(12))
    hidden, targets = torch.randn(6, 4), torch.randint(1, 12, (6,))
    all_items = torch.arange(1, 12)  # every item is a negative; the target's copy is masked
    got = sampled_softmax(model, hidden, targets, all_items, log_q=None)
    torch.testing.assert_close(got, full_ce(model, hidden, targets))


def test_per_target_negatives_with_all_items_equal_full_softmax_and_shared_negatives() -> None:
    torch.manual_seed(1)
    model = Fixed(torch.randn(12, 4), torch.randn(12))
    hidden, targets = torch.randn(6, 4), torch.randint(1, 12, (6,))
    per_target = torch.arange(1, 12).expand(6, -1)  # (M, K): each row its own copy of every item
    got = sampled_softmax(model, hidden, targets, per_target, log_q=None)
    torch.testing.assert_close(got, full_ce(model, hidden, targets))
    draws = torch.randint(1, 12, (6, 5))  # distinct rows: row i alone equals a shared draw of row i
    log_q = torch.log(torch.full((12,), 1 / 11))
    rows = [sampled_softmax(model, hidden[i:i + 1], targets[i:i + 1], draws[i], log_q) for i in range(6)]
    torch.testing.assert_close(sampled_softmax(model, hidden, targets, draws, log_q), torch.stack(rows).mean())


def test_sampled_softmax_logq_hand_computed() -> None:
    model = Fixed(E)
    log_q = torch.log(torch.tensor([0.0, 0.5, 0.25, 0.25]))
    negatives = torch.tensor([2, 3])
    got = sampled_softmax(model, H[:1], T[:1], negatives, log_q)  # scores 1 | 0, 1 ; K = 2
    pos, n2, n3 = 1 - math.log(2 * 0.5), 0 - math.log(2 * 0.25), 1 - math.log(2 * 0.25)
    want = -pos + math.log(math.exp(pos) + math.exp(n2) + math.exp(n3))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_bce_and_gbce_hand_computed() -> None:
    model = Fixed(E)
    negatives = torch.tensor([[2], [1]])  # scores: row0 target 1 neg 0; row1 target 2 neg 0
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = (-math.log(sig(1)) - math.log(1 - sig(0)) - math.log(sig(2)) - math.log(1 - sig(0))) / 2
    assert bce(model, H, T, negatives).item() == pytest.approx(want, rel=1e-6)
    beta = 0.5
    want_g = (-beta * math.log(sig(1)) - math.log(1 - sig(0)) - beta * math.log(sig(2)) - math.log(1 - sig(0))) / 2
    assert bce(model, H, T, negatives, beta=beta).item() == pytest.approx(want_g, rel=1e-6)


def test_gbce_beta_limits() -> None:
    assert gbce_beta(1001, 1000, 0.75) == pytest.approx(1.0)  # all negatives: plain BCE
    alpha = 1 / 1000
    assert gbce_beta(1001, 1, 0.75) == pytest.approx(alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))
    assert gbce_beta(1001, 1, 0.0) == pytest.approx(1.0)


def test_bce_ignores_accidental_hits() -> None:
    model = Fixed(E)
    hit = bce(model, H[:1], T[:1], torch.tensor([[1]]))
    assert hit.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))), rel=1e-6)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("name,sampler", [("sampled", "uniform"), ("sampled", "popularity"),
                                          ("sampled", "in-batch"), ("bce", "uniform"), ("gbce", "popularity")])
def test_every_loss_gives_finite_gradients(name: str, sampler: str, shared: bool) -> None:
    torch.manual_seed(2)
    model = Fixed(torch.randn(20, 4))
    hidden = torch.randn(8, 4, requires_grad=True)
    targets = torch.randint(1, 20, (8,))
    counts = torch.randint(1, 50, (20,)).numpy()
    s = NegativeSampler(19, sampler, counts)
    cfg = LossConfig(name, 5, sampler, shared_negatives=shared)
    loss = compute_loss(model, hidden, targets, cfg, s, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and hidden.grad is not None and torch.isfinite(hidden.grad).all()


def test_sampler_draws_real_items_only() -> None:
    counts = torch.tensor([100, 1, 1, 1000]).numpy()
    for kind in ("uniform", "popularity"):
        draws = NegativeSampler(3, kind, counts).sample((2000,), torch.Generator().manual_seed(0))
        assert draws.min() >= 1 and draws.max() <= 3
    pop = NegativeSampler(3, "popularity", counts).sample((2000,), torch.Generator().manual_seed(0))
    assert (pop == 3).float().mean() > 0.9
