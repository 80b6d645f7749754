"""Carry a trained model over to another catalog: ``seqrec train --init-from ARTIFACT [--freeze encoder]``.

The sequence encoder (every weight outside the item tower) and the tower's catalog-free weights (the text
projection, the combination layer, the output projection) are copied from the artifact; the per-item tables
and the attribute vocabularies belong to the new catalog and start fresh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from seqrec.errors import SeqrecError
from seqrec.models.base import SequenceModel
from seqrec.settings import check_fields, setting

FREEZE = ("none", "encoder")
CATALOG_FREE = ("tower.text_proj.", "tower.mix.", "tower.out_proj.")


@dataclass(frozen=True)
class TransferConfig:
    init_from: str | None = setting(None, "start from this artifact's sequence encoder and text projection "
                                    "(same model and sizes; the new catalog's item tables start fresh)")
    freeze: str = setting("none", "with --init-from: keep the copied encoder fixed (train only the item tower)",
                          choices=FREEZE)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.freeze != "none" and self.init_from is None:
            raise SeqrecError("--freeze needs --init-from ARTIFACT")


def transferable(key: str) -> bool:
    """Encoder weights and the tower's catalog-free ones; never user features (they belong to the log's users)."""
    if key.startswith("user_tower."):
        return False
    return not key.startswith("tower.") or key.startswith(CATALOG_FREE)


def init_from(model: SequenceModel, source: SequenceModel, freeze: str = "none", where: str = "") -> list[str]:
    """Copy ``source``'s encoder and catalog-free tower weights into ``model``; returns the keys copied."""
    own, theirs = model.state_dict(), source.state_dict()
    extra = [k for k in theirs if transferable(k) and k not in own]
    if extra:  # a part of the source (an output transform, a low-pass branch, a text projection) would be dropped
        raise SeqrecError(f"{where}: holds {extra[0]}, which this model does not have; --init-from needs the same "
                          "model settings (head, lowpass, item mode, ...)")
    copied = []
    for key, value in theirs.items():
        if not transferable(key) or key not in own:
            continue
        if own[key].shape != value.shape:
            raise SeqrecError(f"{where}: {key} is {tuple(value.shape)} there but {tuple(own[key].shape)} here; "
                              "--init-from needs the same model settings (dim, n_layers, ...)")
        with torch.no_grad():
            own[key].copy_(value)
        copied.append(key)
    missing = [k for k in own if not k.startswith(("tower.", "user_tower.")) and k not in theirs]
    if missing or not copied:
        raise SeqrecError(f"{where}: holds no {missing[0] if missing else 'encoder weight'} of this model; "
                          "--init-from needs an artifact of the same model")
    if freeze == "encoder":
        for name, param in model.named_parameters():
            if not name.startswith(("tower.", "user_tower.")):
                param.requires_grad_(False)
    return copied


def transfer_hook(model_name: str, path: str, freeze: str) -> Callable[[SequenceModel], None]:
    """Load the artifact now (a bad one fails before the data is trained on) and copy it into the new model."""
    from seqrec.artifact import load_artifact

    art = load_artifact(path)
    if art.model_name != model_name:
        raise SeqrecError(f"--init-from {path}: a {art.model_name} model, not {model_name}; train --model "
                          f"{art.model_name}")

    def hook(model: SequenceModel) -> None:
        init_from(model, art.model, freeze, f"--init-from {path}")

    return hook
