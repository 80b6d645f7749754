"""`seqrec export ARTIFACT --format onnx --out model.onnx`: the encoder as ONNX, the item table beside it.

The ONNX graph is the ``predict_next(items)`` path: input ``items`` (B, L) int64, left-padded with 0,
dynamic batch and length (a history longer than the model's ``max_len`` is cut to its last ``max_len``
items inside the graph, as the model does); output ``query`` (B, D) float32. The item table goes to
``<out stem>.items.safetensors`` (``weight`` (N + 1, D), ``bias`` (N + 1,) when the model has one,
metadata: model, version, similarity), so a score is ``query @ weight.T + bias`` with row 0 (padding)
never recommended, as in :mod:`seqrec.scoring`.

The recurrent models (lstm, gru4rec) run packed sequences, which do not export; their graph runs the
same RNN over right-padded input and reads the state after each row's last item, which equals the packed
run (the export checks it). Every export is checked with onnxruntime, when installed, against torch
on histories of several lengths and paddings: a difference above ``--tolerance`` is an error.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seqrec.errors import SeqrecError

FORMATS = ("onnx",)
DEFAULT_TOLERANCE = 1e-4
OPSET = 18


class _Encoder(nn.Module):
    """(B, L) item ids -> (B, D) next-item query, as ``model.predict_next``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        m: Any = self.model
        return m.predict_next(items)


class _RecurrentEncoder(nn.Module):
    """``predict_next`` of lstm / gru4rec without packed sequences (which neither exporter handles)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        m: Any = self.model
        items = items[:, -int(m.config.max_len):]
        lengths = (items > 0).sum(1)  # (B,)
        x = m.tower(items)  # (B, L, D)
        width = items.shape[1]
        idx = torch.arange(width, device=items.device)[None, :] + (width - lengths)[:, None]  # roll each row
        idx = torch.where(idx >= width, idx - width, idx)
        out, _ = m.rnn(x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1])))  # (B, L, H): real items first
        last = out.gather(1, (lengths - 1).clamp(min=0)[:, None, None].expand(-1, 1, out.shape[-1]))[:, 0]
        return m.similarity.query(last * (lengths > 0)[:, None].to(last.dtype))


def encoder_module(model: nn.Module) -> nn.Module:
    """The exportable encoder of a loaded model; a model that has none raises a one-line SeqrecError."""
    from seqrec.models.gru4rec import GRU4RecModel
    from seqrec.models.lstm import LSTMModel
    from seqrec.models.popular import PopularModel

    if isinstance(model, PopularModel):
        raise SeqrecError("the popular model has no encoder to export: its scores are item counts, the same for "
                          "every history (the item table holds them as the bias)")
    if getattr(getattr(model, "config", None), "use_time", False):
        raise SeqrecError("this HSTU artifact uses event times (use_time); the ONNX export takes item ids only: "
                          "retrain it without use_time to export it")
    if isinstance(model, (GRU4RecModel, LSTMModel)):
        return _RecurrentEncoder(model).eval()
    return _Encoder(model).eval()


_OPERATOR = re.compile(r"(?:aten|prim|onnx)::[A-Za-z_][\w.]*|torch\.ops\.[\w.]+")


def operator_error(exc: BaseException, model_name: str) -> SeqrecError:
    """One line naming the operator the exporter could not translate, when its message names one."""
    text = f"{exc}\n{exc.__cause__ or ''}"
    ops = list(dict.fromkeys(_OPERATOR.findall(text)))
    if ops:
        return SeqrecError(f"cannot export {model_name} to ONNX: operator {ops[0]} is not supported by the exporter "
                           f"(opset {OPSET})")
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return SeqrecError(f"cannot export {model_name} to ONNX: {type(exc).__name__}: {first[:300]}")


def export_module(module: nn.Module, example: torch.Tensor, out: Path, model_name: str) -> None:
    """Write ``module`` (items (B, L) -> (B, D)) to ``out`` with dynamic batch and length.

    torch.export (the dynamo exporter) for the attention models; the TorchScript exporter for the
    recurrent ones, whose RNN layers it writes as ONNX's own GRU / LSTM operators (the dynamo exporter of
    torch 2.13 has no translation for aten::gru).
    """
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
            warnings.simplefilter("ignore")
            if isinstance(module, _RecurrentEncoder):
                torch.onnx.export(module, (example,), str(out), input_names=["items"], output_names=["query"],
                                  dynamic_axes={"items": {0: "batch", 1: "length"}, "query": {0: "batch"}},
                                  dynamo=False, opset_version=OPSET)
                return
            program = torch.onnx.export(module, (example,), input_names=["items"], output_names=["query"],
                                        dynamic_shapes={"items": {0: batch, 1: length}}, dynamo=True,
                                        opset_version=OPSET, verbose=False)
            if program is None:
                raise SeqrecError("the ONNX exporter returned no program")
            program.save(str(out))
    except SeqrecError:
        raise
    except Exception as exc:  # the exporters raise many kinds; each becomes one line
        raise operator_error(exc, model_name) from None


def sample_histories(n_items: int, max_len: int, seed: int = 0) -> list[torch.Tensor]:
    """Left-padded (B, L) batches of several widths, with short, full and over-long histories."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for batch, width in ((1, 1), (3, 7), (4, max_len), (2, max_len + 5)):
        items = torch.randint(1, n_items + 1, (batch, width), generator=g)
        if batch > 1:
            items[0, : width // 2] = 0  # a short history, padded on the left
        out.append(items)
    return out


def check_onnx(module: nn.Module, path: Path, n_items: int, max_len: int) -> float:
    """Largest |onnxruntime - torch| over :func:`sample_histories`; NaN when onnxruntime is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        return float("nan")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for items in sample_histories(n_items, max_len):
        with torch.inference_mode():
            ref = module(items).float().numpy()
        got = session.run(None, {"items": items.numpy()})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def export_artifact(artifact_dir: Path, out: Path, fmt: str = "onnx",
                    tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Export an artifact's encoder and item table; returns a summary (paths, max difference)."""
    if fmt not in FORMATS:
        raise SeqrecError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    from safetensors.torch import save_file

    from seqrec.artifact import load_artifact
    from seqrec.serve.index import model_version

    art = load_artifact(artifact_dir)
    model = art.model.eval().cpu()
    module = encoder_module(model)
    n_items = int(model.item_table().weight.shape[0]) - 1
    max_len = int(model.config.max_len)
    with torch.inference_mode():
        for items in sample_histories(n_items, max_len, seed=1):  # the rewritten RNN path equals the model's
            gap = float((module(items) - model.predict_next(items)).abs().max())
            if gap > tolerance:
                raise SeqrecError(f"cannot export {art.model_name}: its exportable encoder differs from the model "
                                  f"by {gap:.2e} (> {tolerance:g})")
    out.parent.mkdir(parents=True, exist_ok=True)
    example = sample_histories(n_items, max_len)[2]
    export_module(module, example, out, art.model_name)
    worst = check_onnx(module, out, n_items, max_len)
    if worst > tolerance:
        out.unlink(missing_ok=True)
        raise SeqrecError(f"the ONNX graph of {art.model_name} differs from torch by {worst:.2e} (> {tolerance:g}) "
                          "in onnxruntime; nothing was written")
    with torch.inference_mode():
        table = model.item_table()
        tensors = {"weight": table.weight.detach().float().contiguous()}
        if table.bias is not None:
            tensors["bias"] = table.bias.detach().float().contiguous()
    items_path = item_table_path(out)
    version = model_version(art)
    meta = {"model": art.model_name, "version": version, "max_len": str(max_len), "n_items": str(n_items),
            "similarity": type(model.similarity).__name__, "score": "query @ weight.T + bias; row 0 is padding"}
    save_file(tensors, str(items_path), metadata=meta)
    return {"model": art.model_name, "version": version, "onnx": str(out), "items": str(items_path),
            "max_abs_diff": worst}


def item_table_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.stem + ".items.safetensors")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the `export` subcommand."""
    p = sub.add_parser("export", help="export an artifact's encoder (ONNX) and item table",
                       description="Write the encoder (items (B, L) int64, left-padded -> query (B, D)) as ONNX with "
                       "dynamic batch and length, and the item table to OUT_STEM.items.safetensors; checked "
                       "against torch with onnxruntime when it is installed (pip install 'seqrec[onnx]').")
    p.add_argument("artifact", type=Path, help="an artifact directory written by `seqrec train --out`")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="export format (default: onnx)")
    p.add_argument("--out", type=Path, help="output file (default: ARTIFACT/model.onnx)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest accepted |onnxruntime - torch| (default: {DEFAULT_TOLERANCE:g})")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it and onnx)
    except ImportError:
        raise SeqrecError("`seqrec export` needs onnx and onnxscript: pip install 'seqrec[onnx]'") from None
    out = args.out or args.artifact / "model.onnx"
    summary = export_artifact(args.artifact, out, args.format, args.tolerance)
    print(json.dumps(summary))
    return 0
