"""Incremental recurrent state: one step per event equals re-encoding the history (1e-5)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from seqrec.artifact import load_artifact
from seqrec.errors import SeqrecError
from seqrec.serve.state import RecurrentStepper


@pytest.mark.parametrize("model", ["lstm", "gru4rec"])
def test_step_per_event_equals_recomputation(tmp_path: Path, build_artifact: Callable[..., Path], model: str) -> None:
    net = load_artifact(build_artifact(tmp_path / model, model=model)).model.eval()
    stepper = RecurrentStepper(net)
    g = torch.Generator().manual_seed(0)
    history = torch.randint(1, 61, (net.config.max_len,), generator=g).tolist()
    state = stepper.initial()
    for n, item in enumerate(history, start=1):
        state = stepper.step(state, item)
        assert stepper.exact_for(state)
        with torch.inference_mode():
            ref = net.predict_next(torch.tensor([history[:n]]))[0]
        torch.testing.assert_close(stepper.query(state), ref, atol=1e-5, rtol=0)
    state = stepper.step(state, history[0])  # one more than the model's window
    assert not stepper.exact_for(state)


def test_attention_models_are_refused(tmp_path: Path, build_artifact: Callable[..., Path]) -> None:
    net = load_artifact(build_artifact(tmp_path / "sasrec", model="sasrec")).model
    with pytest.raises(SeqrecError, match="recurrent"):
        RecurrentStepper(net)
