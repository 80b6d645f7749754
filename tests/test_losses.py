"""Each loss against a hand-computed case; sampled softmax over all items equals full softmax."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from seqrec.errors import SeqrecError
from seqrec.items.tower import ItemTable
from seqrec.losses import (
    LOSSES,
    LossConfig,
    LossInputs,
    NegativeSampler,
    bce,
    compute_loss,
    full_ce,
    gbce_beta,
    register_loss,
    sampled_softmax,
)
from seqrec.tiled_ce import tiled_ce


def fixed(emb: torch.Tensor, bias: torch.Tensor | None = None) -> ItemTable:
    """A hand-set catalog table whose weight (and bias) are leaves that collect gradients."""
    return ItemTable(emb.clone().requires_grad_(), None if bias is None else bias.clone().requires_grad_())


E = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # 3 items + padding
H = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # logits rows: [1, 0, 1] and [0, 2, 2]
T = torch.tensor([1, 3])


def test_full_ce_hand_computed() -> None:
    want = ((-1 + math.log(2 * math.e + 1)) + (-2 + math.log(1 + 2 * math.e**2))) / 2
    assert full_ce(H, ItemTable(E, None), T).item() == pytest.approx(want, rel=1e-6)
    assert tiled_ce(H, ItemTable(E, None), T, tile=1).item() == pytest.approx(want, rel=1e-6)


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
def test_tiled_ce_matches_plain_loss_and_gradients(row_chunk: int, tile: int, with_bias: bool, threads: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("seqrec.tiled_ce.ROW_CHUNK", row_chunk)
    torch.manual_seed(tile)
    emb, bias = torch.randn(30, 8) * 3, torch.randn(30) if with_bias else None
    hidden, targets = torch.randn(17, 8), torch.randint(1, 30, (17,))  # repeated targets too
    t1, t2 = fixed(emb, bias), fixed(emb, bias)
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    l1 = full_ce(h1, t1, targets)
    l2 = tiled_ce(h2, t2, targets, tile=tile)
    (l1 * 3).backward()
    (l2 * 3).backward()
    torch.testing.assert_close(l1, l2)
    pairs = [(h1.grad, h2.grad), (t1.weight.grad, t2.weight.grad)]
    if t1.bias is not None and t2.bias is not None:
        pairs.append((t1.bias.grad, t2.bias.grad))
    for a, b in pairs:
        assert a is not None and b is not None
        torch.testing.assert_close(a, b)
    assert torch.get_num_threads() == threads  # restored after the tile threads ran single-threaded


@pytest.mark.parametrize("threads", [3], indirect=True)
def test_tiled_ce_gives_the_same_numbers_with_and_without_parallel_tiles(threads: int) -> None:
    torch.manual_seed(0)
    emb, bias = torch.randn(50, 8), torch.randn(50)
    hidden, targets = torch.randn(20, 8), torch.randint(1, 50, (20,))
    results = []
    for parallel in (True, False):
        table, h = fixed(emb, bias), hidden.clone().requires_grad_()
        loss = tiled_ce(h, table, targets, tile=8, parallel=parallel)
        loss.backward()
        results.append((loss, h.grad, table.weight.grad, table.bias.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("tile", [4, 7])  # 7: the last tile is a column slice of the bf16 workspace
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("threads", [1, 3], indirect=True)
def test_bf16_gradient_matmuls_stay_within_bf16_rounding_of_the_plain_gradients(
        tile: int, with_bias: bool, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("seqrec.tiled_ce.ROW_CHUNK", 16)
    torch.manual_seed(tile)
    emb, bias = torch.randn(300, 16), torch.randn(300) if with_bias else None
    hidden, targets = torch.randn(40, 16), torch.randint(1, 300, (40,))
    t1, t2 = fixed(emb, bias), fixed(emb, bias)
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    l1 = full_ce(h1, t1, targets)
    l2 = tiled_ce(h2, t2, targets, tile=tile, bf16_grads=True)
    l1.backward()
    l2.backward()
    assert l2.dtype == torch.float32
    torch.testing.assert_close(l2, l1)  # the loss itself is all fp32: logits, max, exp, sums
    pairs = [(h1.grad, h2.grad), (t1.weight.grad, t2.weight.grad)]
    if t1.bias is not None and t2.bias is not None:
        pairs.append((t1.bias.grad, t2.bias.grad))
    for plain, low in pairs:
        assert plain is not None and low is not None and low.dtype == torch.float32
        error = ((low - plain).norm() / plain.norm()).item()
        assert 0.0 < error < 1e-2  # bf16 rounding (2^-9 relative): present, and small
    assert torch.get_num_threads() == threads


def test_sampled_softmax_with_all_items_equals_full_softmax() -> None:
    torch.manual_seed(1)
    table = ItemTable(torch.randn(12, 4), torch.randn(12))
    hidden, targets = torch.randn(6, 4), torch.randint(1, 12, (6,))
    all_items = torch.arange(1, 12)  # every item is a negative; the target's copy is masked
    got = sampled_softmax(hidden, table, targets, all_items, log_q=None)
    torch.testing.assert_close(got, full_ce(hidden, table, targets))


def test_per_target_negatives_with_all_items_equal_full_softmax_and_shared_negatives() -> None:
    torch.manual_seed(1)
    table = ItemTable(torch.randn(12, 4), torch.randn(12))
    hidden, targets = torch.randn(6, 4), torch.randint(1, 12, (6,))
    per_target = torch.arange(1, 12).expand(6, -1)  # (M, K): each row its own copy of every item
    got = sampled_softmax(hidden, table, targets, per_target, log_q=None)
    torch.testing.assert_close(got, full_ce(hidden, table, targets))
    draws = torch.randint(1, 12, (6, 5))  # distinct rows: row i alone equals a shared draw of row i
    log_q = torch.log(torch.full((12,), 1 / 11))
    rows = [sampled_softmax(hidden[i:i + 1], table, targets[i:i + 1], draws[i], log_q) for i in range(6)]
    torch.testing.assert_close(sampled_softmax(hidden, table, targets, draws, log_q), torch.stack(rows).mean())


def test_sampled_softmax_logq_hand_computed() -> None:
    log_q = torch.log(torch.tensor([0.0, 0.5, 0.25, 0.25]))
    negatives = torch.tensor([2, 3])
    got = sampled_softmax(H[:1], ItemTable(E, None), T[:1], negatives, log_q)  # scores 1 | 0, 1 ; K = 2
    pos, n2, n3 = 1 - math.log(2 * 0.5), 0 - math.log(2 * 0.25), 1 - math.log(2 * 0.25)
    want = -pos + math.log(math.exp(pos) + math.exp(n2) + math.exp(n3))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_bce_and_gbce_hand_computed() -> None:
    table = ItemTable(E, None)
    negatives = torch.tensor([[2], [1]])  # scores: row0 target 1 neg 0; row1 target 2 neg 0
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = (-math.log(sig(1)) - math.log(1 - sig(0)) - math.log(sig(2)) - math.log(1 - sig(0))) / 2
    assert bce(H, table, T, negatives).item() == pytest.approx(want, rel=1e-6)
    beta = 0.5
    want_g = (-beta * math.log(sig(1)) - math.log(1 - sig(0)) - beta * math.log(sig(2)) - math.log(1 - sig(0))) / 2
    assert bce(H, table, T, negatives, beta=beta).item() == pytest.approx(want_g, rel=1e-6)


def test_losses_add_the_table_bias() -> None:
    """A bias of b on every item shifts each score by b: CE is unchanged, BCE is not."""
    bias = torch.tensor([0.0, 0.7, 0.7, 0.7])
    plain, shifted = ItemTable(E, None), ItemTable(E, bias)
    torch.testing.assert_close(full_ce(H, shifted, T), full_ce(H, plain, T))
    target_bias = ItemTable(E, torch.tensor([0.0, 5.0, 0.0, 0.0]))  # only item 1 (row 0's target) moves
    assert full_ce(H[:1], target_bias, T[:1]) < full_ce(H[:1], plain, T[:1])
    negatives = torch.tensor([[2], [1]])
    assert bce(H, shifted, T, negatives).item() != pytest.approx(bce(H, plain, T, negatives).item())


def test_gbce_beta_limits() -> None:
    assert gbce_beta(1001, 1000, 0.75) == pytest.approx(1.0)  # all negatives: plain BCE
    alpha = 1 / 1000
    assert gbce_beta(1001, 1, 0.75) == pytest.approx(alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))
    assert gbce_beta(1001, 1, 0.0) == pytest.approx(1.0)


def test_bce_ignores_accidental_hits() -> None:
    hit = bce(H[:1], ItemTable(E, None), T[:1], torch.tensor([[1]]))
    assert hit.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))), rel=1e-6)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("name,sampler", [("ce", "uniform"), ("sampled", "uniform"), ("sampled", "popularity"),
                                          ("sampled", "in-batch"), ("bce", "uniform"), ("gbce", "popularity")])
def test_every_loss_gives_finite_gradients(name: str, sampler: str, shared: bool) -> None:
    torch.manual_seed(2)
    table = fixed(torch.randn(20, 4))
    hidden = torch.randn(8, 4, requires_grad=True)
    targets = torch.randint(1, 20, (8,))
    counts = torch.randint(1, 50, (20,)).numpy()
    s = NegativeSampler(19, sampler, counts)
    cfg = LossConfig(name=name, n_negatives=5, sampler=sampler, shared_negatives=shared)
    loss = compute_loss(LossInputs(hidden, table, targets, cfg, s, torch.Generator().manual_seed(0)))
    loss.backward()
    assert torch.isfinite(loss) and hidden.grad is not None and torch.isfinite(hidden.grad).all()
    assert table.weight.grad is not None and torch.isfinite(table.weight.grad).all()
    assert table.weight.grad.abs().sum() > 0


def test_compute_loss_runs_the_named_loss() -> None:
    torch.manual_seed(3)
    table = ItemTable(torch.randn(20, 4), torch.randn(20))
    hidden, targets = torch.randn(8, 4), torch.randint(1, 20, (8,))
    s = NegativeSampler(19, "uniform")
    ce = compute_loss(LossInputs(hidden, table, targets, LossConfig(name="ce"), s))
    torch.testing.assert_close(ce, full_ce(hidden, table, targets))
    negatives = s.sample((8, 3), torch.Generator().manual_seed(7))
    got = compute_loss(LossInputs(hidden, table, targets, LossConfig(name="bce", n_negatives=3), s,
                                  torch.Generator().manual_seed(7)))
    torch.testing.assert_close(got, bce(hidden, table, targets, negatives))


def test_a_registered_loss_is_a_valid_setting_and_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SeqrecError, match="loss"):
        LossConfig(name="double_ce")
    monkeypatch.setitem(LOSSES, "double_ce", LOSSES["ce"])  # undone after the test
    register_loss("double_ce", lambda x: 2 * full_ce(x.query, x.table, x.targets))
    torch.manual_seed(4)
    table = ItemTable(torch.randn(10, 4), None)
    hidden, targets = torch.randn(5, 4), torch.randint(1, 10, (5,))
    got = compute_loss(LossInputs(hidden, table, targets, LossConfig(name="double_ce"), NegativeSampler(9, "uniform")))
    torch.testing.assert_close(got, 2 * full_ce(hidden, table, targets))


def test_sampler_draws_real_items_only() -> None:
    counts = torch.tensor([100, 1, 1, 1000]).numpy()
    for kind in ("uniform", "popularity"):
        draws = NegativeSampler(3, kind, counts).sample((2000,), torch.Generator().manual_seed(0))
        assert draws.min() >= 1 and draws.max() <= 3
    pop = NegativeSampler(3, "popularity", counts).sample((2000,), torch.Generator().manual_seed(0))
    assert (pop == 3).float().mean() > 0.9
