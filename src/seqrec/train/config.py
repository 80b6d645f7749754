"""Training configuration: one frozen dataclass, each field declared once with its help and validation.

The model's own settings (``max_len`` included) live in its config; the loss's in :class:`LossConfig`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from seqrec.errors import SeqrecError
from seqrec.losses import LossConfig
from seqrec.settings import check_fields, named, nearest, setting

DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N
VALID_METRICS = ("HR", "NDCG", "MRR", "Recall")  # @K, computed on the validation users


def check_device(name: str, value: Any) -> None:
    """The device's spelling only; whether it exists is checked when training starts."""
    if value in DEVICES or (isinstance(value, str) and re.fullmatch(r"cuda:\d+", value)):
        return
    raise SeqrecError(f"{named(name, value)} is not a device{nearest(str(value), DEVICES)}; "
                      "use auto, cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class PrivacyConfig:
    """DP-SGD with the user as the unit of privacy (off unless ``epsilon`` is set); see docs/privacy.md."""

    epsilon: float | None = setting(None, "differentially private training (DP-SGD, one user = one record): the "
                                    "privacy budget epsilon to reach over the planned epochs (none: no DP)",
                                    above=0.0, flag="dp-epsilon")
    delta: float | None = setting(None, "DP delta; must be below 1 / the number of users (none: 0.1 / users)",
                                  above=0.0, high=1.0, flag="dp-delta")
    clip: float = setting(1.0, "DP: each user's gradient (all their windows and targets) is clipped to this L2 norm",
                          above=0.0, flag="dp-clip")
    batch_users: int = setting(64, "DP: expected users per step; each user is Poisson-sampled with probability "
                               "this / users", low=1, flag="dp-batch-users")
    accountant: str = setting("rdp", "DP privacy accountant (Opacus): rdp or prv", choices=("rdp", "prv"),
                              flag="dp-accountant")

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def enabled(self) -> bool:
        return self.epsilon is not None


def check_metric(name: str, value: Any) -> None:
    metric, _, k = str(value).partition("@")
    if metric in VALID_METRICS and k.isdigit() and int(k) >= 1:
        return
    options = [f"{m}@10" for m in VALID_METRICS]
    raise SeqrecError(f"{named(name, value)} is not a validation metric{nearest(str(value), options)}; "
                      f"use NAME@K with NAME one of {', '.join(VALID_METRICS)}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = setting(20, "training epochs at most (early stopping may end sooner)", low=0)
    batch_size: int = setting(128, "training windows per batch", low=1)
    lr: float = setting(1e-3, "AdamW learning rate", above=0.0)
    weight_decay: float = setting(0.0, "AdamW weight decay, never applied to embeddings, biases or norms", low=0.0)
    grad_clip: float = setting(5.0, "clip the gradient norm to this (0: no clipping)", low=0.0)
    patience: int = setting(5, "epochs without validation improvement before stopping", low=1)
    max_seconds: float | None = setting(None, "stop after the epoch in which this much training time has passed "
                                        "(none: no limit)", above=0.0)
    seed: int = setting(0, "random seed: initialisation, batch order, dropout, negatives", low=0)
    sliding: bool = setting(True, "cut long training sequences into windows, so that every event is a target "
                            "once (off: one window per user, the most recent)")
    bucket: bool = setting(True, "batch windows of similar length together, trim their shared padding and weigh "
                           "every target alike (off: random batches, slower)")
    loss: LossConfig = field(default_factory=LossConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    objective: str | None = setting(None, "training objective: next (next item) or cloze (masked items); "
                                    "none: the model's own", choices=(None, "next", "cloze"))
    mask_prob: float = setting(0.2, "cloze objective: probability that an item is masked", low=0.0, high=1.0)
    warmup_steps: int = setting(0, "steps of linear learning-rate warm-up", low=0)
    schedule: str = setting("constant", "learning rate after the warm-up: constant, or cosine decay to 0 by the "
                            "last epoch", choices=("constant", "cosine"))
    bf16: bool = setting(False, "bfloat16 autocast of the encoder, CPU or CUDA (the catalog softmax stays fp32)")
    device: str = setting("auto", "auto (CUDA when present, else the CPU), cpu, cuda, cuda:N or mps",
                          check=check_device)
    shard: str = setting("none", "with several processes (torchrun, --nproc): none keeps a whole model in each "
                         "(DDP), full shards weights, gradients and optimizer state across them (FSDP2); "
                         "see docs/distributed.md", choices=("none", "full"))
    valid_metric: str = setting("NDCG@10", "validation metric for early stopping and the best epoch",
                                check=check_metric)
    valid_users: int | None = setting(None, "early stopping on a fixed random subset of this many validation "
                                      "users (none: all of them)", low=1)
    train_rest_valid: bool = setting(False, "with valid_users: the other users' validation events become "
                                     "training targets (the test event is never trained on)")
    eval_batch_size: int = setting(256, "users per evaluation batch", low=1)
    exclude_seen: bool = setting(True, "validation ranks items the user has not interacted with yet "
                                 "(include: every item)", flag="exclude-seen/include-seen")
    item_optimizer: str = setting("dense", "item tables' optimizer: dense (AdamW with the rest) or sparse (sparse "
                                  "lookups; Adam moments only for the rows a step touched: catalogs of millions)",
                                  choices=("dense", "sparse"))
    item_dtype: str = setting("float32", "item tables' storage: float32, or bfloat16 (half the memory; needs the "
                              "sparse item optimizer and a sampled loss)", choices=("float32", "bfloat16"))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.train_rest_valid and self.valid_users is None:
            raise SeqrecError("train_rest_valid (--train-rest-valid) needs valid_users (--valid-users N): "
                              "the users whose validation events stay held out")
