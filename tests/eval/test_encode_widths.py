"""Evaluation encodes each row at a width that depends on its own length only (no padding
waste), and gets the states the full max_len window gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.data.batch import eval_inputs, eval_widths
from seqrec.data.sequences import Sequences
from seqrec.eval.evaluate import encode_rows
from seqrec.models.registry import create

MAX_LEN = 20


def _histories() -> Sequences:
    rng = np.random.default_rng(0)
    lengths = np.array([1, 2, 7, 8, 9, 15, 16, 19, 20, 21, 33, 3])
    return Sequences.from_lengths(lengths, rng.integers(1, 31, lengths.sum()))


def test_widths_are_powers_of_two_with_a_spare_column_up_to_max_len() -> None:
    seqs = _histories()
    widths = eval_widths(seqs, MAX_LEN, np.arange(seqs.n_users))
    assert widths.tolist() == [8, 8, 8, 16, 16, 16, 20, 20, 20, 20, 20, 8]
    assert (widths > np.minimum(seqs.lengths, MAX_LEN - 1)).all()  # room for the whole history + 1


PARAMS: dict[str, dict[str, int]] = {"sasrec": {"n_heads": 2}, "bert4rec": {"n_heads": 2}, "hstu": {"n_heads": 2},
                                     "gru4rec": {"hidden": 16}, "lstm": {"hidden": 16}}


@pytest.mark.parametrize("name", list(PARAMS))
def test_encode_rows_equals_full_width_encoding(name: str) -> None:
    torch.manual_seed(0)
    model = create(name, n_items=30, max_len=MAX_LEN, dim=16, **PARAMS[name]).eval()
    seqs = _histories()
    rows = np.arange(seqs.n_users)
    with torch.no_grad():
        got = encode_rows(model, seqs, rows)
        full = model.predict_next(eval_inputs(seqs, MAX_LEN, rows))
        alone = torch.cat([encode_rows(model, seqs, rows[i : i + 1])
                           for i in range(len(rows))])
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, alone, atol=1e-6, rtol=1e-6)  # a row's state ignores its batch
