"""The sentence encoder's transformer as an int8 ONNX Runtime model: exported once, quantised per channel,
cached on disk by the weights' digest.

Dynamic quantisation (int8 weights, one scale per output channel; activations quantised per batch) runs
MiniLM's matrix products in integer arithmetic, which is what makes CPU embedding fast on machines without
bf16 hardware too. The vectors move a little (cosine to fp32 about 0.99; benchmarks/README.md has the
measured figures and what they do to recommendation quality), so ``precision="int8"`` is a separate encoder
name and a separate cache key. Needs ``pip install "seqrec[text,onnx]"`` (onnx and onnxruntime).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.errors import SeqrecError

FORMAT = "int8-per-channel-v1"  # bump when the export or the quantisation changes
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Body(torch.nn.Module):
    """The transformer with positional inputs and its last hidden state as the only output."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state


@functools.cache
def weights_digest(model_dir: Path) -> str:
    """sha256 of the export format, ONNX Runtime's version (its quantiser) and the model folder's weight and
    config files: what the int8 model depends on. Computed once per process (the weights are 90 MB)."""
    import onnxruntime

    digest = hashlib.sha256(f"{FORMAT}/{onnxruntime.__version__}".encode())
    for name in sorted(p.name for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin", ".json")):
        digest.update(name.encode() + b"\x00" + (model_dir / name).read_bytes())
    return digest.hexdigest()[:24]


@contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's tracer warnings and the quantiser's advice go nowhere: they are not the user's business."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _need_onnx() -> Any:
    try:
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: F401
    except ImportError:
        raise SeqrecError('the int8 text encoder needs ONNX Runtime: pip install "seqrec[text,onnx]"') from None
    return onnxruntime


def build_int8(transformer: torch.nn.Module, tokenizer: Any, out: Path) -> None:
    """Export ``transformer`` (a Hugging Face encoder) to ONNX and quantise it to ``out``, atomically."""
    _need_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.parent.mkdir(parents=True, exist_ok=True)
    body = _Body(copy.deepcopy(transformer)).eval()  # the export changes the module it traces: use a copy
    sample = tokenizer(["a short text", "a somewhat longer text to pad the other"], padding=True,
                       return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "hidden")}
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp, _quiet():
        fp32 = Path(tmp) / "fp32.onnx"
        torch.onnx.export(body, tuple(sample[name] for name in INPUTS), str(fp32), input_names=list(INPUTS),
                          output_names=["hidden"], dynamic_axes=axes, opset_version=17, dynamo=False)
        int8 = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": 1})  # 1 = float: shapes the quantiser cannot infer
        os.replace(int8, out)  # a killed build leaves no half-written model behind


class Int8Runner:
    """An ONNX Runtime session over the cached int8 model: token batches in, mean-pooled unit vectors out."""

    def __init__(self, transformer: torch.nn.Module, tokenizer: Any, model_dir: Path, cache: Path) -> None:
        ort = _need_onnx()
        self.path = cache / f"{weights_digest(model_dir)}.onnx"
        if not self.path.is_file():
            print(f"seqrec: building the int8 text encoder once (cached in {cache})", file=sys.stderr)
            build_int8(transformer, tokenizer, self.path)
        self._ort = ort
        self._sessions: dict[int, Any] = {}

    def session(self, threads: int) -> Any:
        if threads not in self._sessions:
            options = self._ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._sessions[threads] = self._ort.InferenceSession(str(self.path), options,
                                                                 providers=["CPUExecutionProvider"])
        return self._sessions[threads]

    def encode(self, batch: dict[str, np.ndarray], threads: int) -> np.ndarray:
        """(n, dim) L2-normalised mean of the last hidden states over each text's real tokens."""
        feed = {name: np.asarray(batch[name], dtype=np.int64) for name in INPUTS}
        hidden = self.session(threads).run(None, feed)[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        mean = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)
        return (mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)).astype(np.float32)
