"""Training configuration: one frozen dataclass, serialised with asdict."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0  # never applied to embeddings, biases or norms
    grad_clip: float | None = 5.0
    patience: int = 5  # epochs without validation improvement before stopping
    max_seconds: float | None = None  # stop after the epoch in which this much training time has passed
    seed: int = 0
    max_len: int = 50
    sliding: bool = True  # cut long training sequences into windows (every event a target once)
    bucket: bool = True  # batch windows of similar length together, trim shared padding, weigh targets alike
    loss: str = "ce"  # ce | sampled | bce | gbce
    n_negatives: int = 1
    sampler: str = "uniform"  # uniform | popularity | in-batch
    logq: bool = True
    gbce_t: float = 0.75
    shared_negatives: bool = True  # sampled softmax: one draw of n_negatives per batch (False: per target)
    objective: str | None = None  # None: the model's default ("next" or "cloze")
    mask_prob: float = 0.2  # cloze objective
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine
    bf16: bool = False  # bfloat16 autocast of the encoder (the catalog softmax stays fp32)
    ce_bf16_grads: bool = False  # full CE: the catalog softmax's two gradient matmuls on bf16 operands
    device: str = "auto"
    valid_metric: str = "NDCG@10"
    valid_users: int | None = None  # early stopping on a fixed random subset of validation users (None: all)
    # with valid_users: the validation events of the other users become training targets
    # (only the sampled users' validation events are held out; test events never are trained on)
    train_rest_valid: bool = False
    eval_batch_size: int = 256
    exclude_seen: bool = True
