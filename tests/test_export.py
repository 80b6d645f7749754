"""ONNX export: onnxruntime matches torch within 1e-4 for every neural model; bad cases are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")
from safetensors.numpy import load_file  # noqa: E402

from seqrec.artifact import Artifact, load_artifact, save_artifact  # noqa: E402
from seqrec.cli import main  # noqa: E402
from seqrec.data.preprocess import build_dataset  # noqa: E402
from seqrec.errors import SeqrecError  # noqa: E402
from seqrec.export import export_artifact, export_module, item_table_path  # noqa: E402
from seqrec.models.popular import PopularModel  # noqa: E402
from seqrec.models.registry import create  # noqa: E402

N_ITEMS, MAX_LEN = 50, 12
PARAMS: dict[str, dict[str, object]] = {
    "lstm": {"dim": 16, "hidden": 12, "n_layers": 2}, "gru4rec": {"dim": 16, "hidden": 12, "n_layers": 1},
    "sasrec": {"dim": 16, "n_heads": 2, "n_layers": 2}, "bert4rec": {"dim": 16, "n_heads": 2, "n_layers": 1},
    "hstu": {"dim": 16, "n_heads": 2, "n_layers": 1}}


def tiny_artifact(path: Path, model: str, **params: object) -> Path:
    rng = np.random.default_rng(0)
    rows = [(u, int(i), t) for u in range(1, 30) for t, i in enumerate(rng.integers(1, N_ITEMS + 1, size=15))]
    rows += [(99, i, 100 + i) for i in range(1, N_ITEMS + 1)]  # every item appears
    import pandas as pd

    data = build_dataset(pd.DataFrame(rows, columns=["user", "item", "time"]), name="tiny")
    torch.manual_seed(0)
    net = create(model, n_items=data.n_items, max_len=MAX_LEN, **{**PARAMS.get(model, {}), **params})
    if isinstance(net, PopularModel):
        net.fit_counts(data.sequences.items)
    return Path(save_artifact(path, Artifact(model, net.eval(), data)))


def histories(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for batch, width in ((1, 1), (5, 4), (3, MAX_LEN), (6, MAX_LEN + 8), (2, 9)):
        items = torch.randint(1, N_ITEMS + 1, (batch, width), generator=g)
        if batch > 1:
            items[0, : width - 1] = 0  # one item, left-padded
            items[1, : width // 2] = 0
        out.append(items)
    return out


@pytest.mark.parametrize(("model", "extra"), [("lstm", {}), ("gru4rec", {}), ("sasrec", {}), ("bert4rec", {}),
                                               ("hstu", {}), ("sasrec", {"lowpass": 0.5, "lowpass_window": 3})])
def test_onnxruntime_matches_torch(tmp_path: Path, model: str, extra: dict[str, object]) -> None:
    art_dir = tiny_artifact(tmp_path / "art", model, **extra)
    out = tmp_path / "out" / f"{model}.onnx"
    summary = export_artifact(art_dir, out)
    assert summary["max_abs_diff"] <= 1e-4
    net = load_artifact(art_dir).model.eval()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for items in histories(seed=7):  # batches and lengths the export never saw
        with torch.inference_mode():
            ref = net.predict_next(items).numpy()
        got = session.run(None, {"items": items.numpy()})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    table = load_file(str(item_table_path(out)))
    with torch.inference_mode():
        ref_table = net.item_table()
    np.testing.assert_array_equal(table["weight"], ref_table.weight.detach().numpy())
    assert ("bias" in table) == (ref_table.bias is not None)


def test_cli_export_and_popular_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art_dir = tiny_artifact(tmp_path / "cos", "gru4rec", similarity="cosine")
    assert main(["export", str(art_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == "gru4rec" and Path(summary["onnx"]).is_file() and Path(summary["items"]).is_file()
    pop = tiny_artifact(tmp_path / "pop", "popular")
    assert main(["export", str(pop), "--out", str(tmp_path / "p.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seqrec: error: the popular model has no encoder") and "\n" not in err


def test_unexportable_operator_is_named(tmp_path: Path) -> None:
    class Histogram(nn.Module):  # aten::histc has no ONNX translation
        def forward(self, items: torch.Tensor) -> torch.Tensor:
            return torch.histc(items.float(), bins=4)[None].expand(items.shape[0], -1)

    with pytest.raises(SeqrecError) as info:
        export_module(Histogram().eval(), torch.ones(2, 3, dtype=torch.long), tmp_path / "x.onnx", "histogram")
    message = str(info.value)
    assert "\n" not in message and "histc" in message and "operator" in message
