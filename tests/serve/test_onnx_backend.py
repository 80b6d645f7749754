"""`seqrec serve --backend onnxruntime`: the same recommendations and scores as torch (1e-4)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from seqrec.artifact import load_artifact
from seqrec.serve.index import ScoreRequest, ServedModel, model_version


@pytest.mark.parametrize("model", ["gru4rec", "sasrec"])
def test_onnxruntime_backend_scores_as_torch(tmp_path: Path, build_artifact: Callable[..., Path], model: str) -> None:
    path = build_artifact(tmp_path / model, model=model)
    art = load_artifact(path)
    torch_model = ServedModel(art, model_version(art))
    ort_model = ServedModel(load_artifact(path), model_version(art), backend="onnxruntime")
    rng = np.random.default_rng(0)
    requests = [ScoreRequest(rng.integers(1, 61, size=n).astype(np.int64), 10, seen, np.array([7], np.int64))
                for n, seen in [(1, True), (3, False), (15, True), (40, True), (7, False)]]
    for a, b in zip(ort_model.score(requests), torch_model.score(requests), strict=True):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(a.items[:5], b.items[:5])  # near-ties further down may swap


def test_popular_is_refused_on_onnxruntime(tmp_path: Path, build_artifact: Callable[..., Path]) -> None:
    from seqrec.errors import SeqrecError

    art = load_artifact(build_artifact(tmp_path / "pop", model="popular"))
    with pytest.raises(SeqrecError, match="no encoder"):
        ServedModel(art, model_version(art), backend="onnxruntime")
