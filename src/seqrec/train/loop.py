"""The training loop: AdamW, early stopping on validation, checkpoints, resume, seeds."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm import tqdm

from seqrec.data.batch import SequenceBatch, TrainBatches
from seqrec.data.sequences import Sequences
from seqrec.data.split import EvalSet, Split
from seqrec.devices import resolve_device
from seqrec.errors import SeqrecError
from seqrec.eval.evaluate import EvalConfig, evaluate
from seqrec.losses import LossInputs, NegativeSampler, compute_loss
from seqrec.models.base import SequenceModel
from seqrec.train.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from seqrec.train.config import TrainConfig
from seqrec.train.distributed import RankBatches, Replicas, all_sum, broadcast, current
from seqrec.train.optim import clip_grad_norm, make_optimizer


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    best_metric: float = float("-inf")
    seconds: float = 0.0
    stopped_by_time: bool = False  # max_seconds ended training before its epochs or patience did
    stopped_by_budget: bool = False  # DP: another epoch would have spent more than the privacy budget
    privacy: dict[str, Any] = field(default_factory=dict)  # DP: noise, sampling, epsilon spent, accountant history


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "cosine" and total > 0:
        progress = min(1.0, max(0, step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return warm * 0.5 * (1.0 + math.cos(math.pi * progress))
    return warm


def cloze(batch: SequenceBatch, window: torch.Tensor, mask_token: int, prob: float,
          gen: torch.Generator, max_len: int) -> SequenceBatch:
    """Masked-item objective: mask random real items of each row's most recent ``max_len`` events
    (``window``, every event of the row: the batch's inputs and its last target); a row the draw left
    without a mask predicts its last item."""
    items = window[:, -max_len:]  # (B, L) the most recent L events, all of them when the window is no longer
    real = items > 0
    masked = (torch.rand(items.shape, generator=gen) < prob) & real
    none = ~masked.any(1)
    masked[none, -1] = real[none, -1]  # every row predicts at least one item
    inputs = torch.where(masked, mask_token, items)
    times = None if batch.times is None else torch.cat([batch.times, batch.times[:, -1:]], 1)[:, -max_len:]
    return SequenceBatch(inputs, torch.where(masked, items, 0), times, batch.users)


def training_sequences(split: Split, valid: EvalSet, rest_valid: bool) -> Sequences:
    """The split's training rows; with ``rest_valid``, users outside ``valid`` also train on
    their validation event (their test history, which ends with it, replaces their row)."""
    if not rest_valid:
        return split.train
    if not np.array_equal(split.valid.users, split.test.users):  # compares shapes too
        raise SeqrecError("training on the validation events needs a leave-one-out split")
    rest = ~np.isin(split.test.users, valid.users)
    return split.train.replace_rows(split.test.users[rest], split.test.history.subset(np.flatnonzero(rest)))


@dataclass
class TargetWeighting:
    """Weight of a batch's mean loss so that every loss row (target) counts alike across batches.

    Bucketed batches hold windows of similar length, so their numbers of targets differ widely (a
    batch of short histories may hold a few hundred, one of long histories thousands). With each
    batch's loss a mean over its own targets, every batch would weigh the same and a target in a
    short-history batch many times more than one in a long-history batch: not the objective of
    random batches. Scaling the batch mean by ``rows / mean rows per batch so far`` gives every
    target the same weight, as a random batch of average size does.
    """

    rows: int = 0  # targets seen so far in this fit
    batches: int = 0

    def weight(self, rows: int) -> float:
        self.rows, self.batches = self.rows + rows, self.batches + 1
        return rows * self.batches / self.rows if self.rows else 1.0


class Trainer:
    def __init__(self, model: SequenceModel, split: Split, cfg: TrainConfig,
                 out_dir: Path | None = None, progress: bool = True,
                 on_epoch: Callable[[dict[str, float]], None] | None = None) -> None:
        self.model, self.split, self.cfg = model, split, cfg
        self.device = resolve_device(cfg.device)
        self.out_dir, self.progress, self.on_epoch = out_dir, progress, on_epoch
        self.objective = cfg.objective or model.objective
        if model.trainable and self.objective not in model.objectives:
            why = ("it has no mask token (a causal model would mask with the padding id)" if self.objective == "cloze"
                   else "its bidirectional attention would let each position see its own target")
            raise SeqrecError(f"{model.name} cannot train with the {self.objective!r} objective: {why}; "
                              f"use {' or '.join(model.objectives)}")
        self.max_len = int(model.config.max_len)
        self.valid = split.valid if cfg.valid_users is None else split.valid.sample(cfg.valid_users, cfg.seed)
        self.train = training_sequences(split, self.valid, cfg.train_rest_valid)
        counts = np.bincount(self.train.items, minlength=split.n_items + 1)
        self.item_counts = counts
        self.sampler = NegativeSampler(split.n_items, cfg.loss.sampler, counts)
        self._rows = TargetWeighting()  # replaced at the start of each fit: the running mean belongs to one fit
        self.ranks = current()  # the torchrun process group, when one was started (train/distributed.py)
        self.net: torch.nn.Module = model  # what the steps call: the model, or its DDP / FSDP wrapper in fit
        self.trained: SequenceModel = model  # whose parameters the steps update (FSDP: a sharded copy on rank 0)
        self.privacy: dict[str, Any] = {}  # DP: noise multiplier, sample rate, epsilon spent, accountant history

    def fit(self, resume: bool = False) -> FitResult:
        model, cfg = self.model.to(self.device), self.cfg
        if not model.trainable:
            if cfg.privacy.enabled:
                raise SeqrecError(f"--dp-epsilon: {model.name} is counted, not trained: its counts are not private")
            return self._fit_statistics()
        if cfg.privacy.enabled:
            if self.ranks.active:
                raise SeqrecError("--dp-epsilon: DP-SGD trains in one process; run it without --nproc or torchrun")
            return self._fit_private(resume)
        if self.ranks.active and cfg.item_optimizer == "sparse":
            raise SeqrecError("--item-optimizer sparse trains in one process (its sparse row gradients are not "
                              "averaged across processes); use --item-optimizer dense with --nproc or torchrun")
        batches = RankBatches(self.train, self.max_len, cfg.batch_size, cfg.sliding, cfg.bucket, self.ranks)
        if len(batches) == 0:
            raise SeqrecError("no training sequence has 2 or more events; nothing to learn from"
                              if self.ranks.world == 1 else
                              f"fewer training windows than the {self.ranks.world} processes; use fewer processes")
        replicas = Replicas(model, cfg.shard, self.device, self.ranks)
        self.net, self.trained = replicas.net, cast(SequenceModel, replicas.trained)
        opt = make_optimizer(replicas.trained, cfg)  # after sharding: FSDP replaces the parameters
        ckpt = self.out_dir / "checkpoint" if self.out_dir else None
        result, start_epoch, bad, best = self._start(replicas, opt, ckpt if resume else None)
        total_steps = cfg.epochs * len(batches)
        for epoch in range(start_epoch, cfg.epochs):
            if bad >= cfg.patience:
                break
            if cfg.max_seconds is not None and result.seconds >= cfg.max_seconds:
                result.stopped_by_time = True
                break
            t0 = time.perf_counter()
            loss = self._epoch(batches, opt, epoch, total_steps)
            state = replicas.model_state()  # gathered on rank 0 under FSDP (every rank takes part)
            row = None
            if self.ranks.main:
                t_valid = time.perf_counter()
                metrics = self.validate(replicas.eval_model(state))
                t_end = time.perf_counter()
                row = {"epoch": epoch + 1, "loss": loss, **metrics, "eval_seconds": t_end - t_valid,
                       "seconds": t_end - t0}
            row = broadcast(row, self.ranks)  # the same history, stopping and best epoch on every rank
            assert row is not None
            result.history.append(row)
            result.seconds += row["seconds"]
            score = row[f"valid_{cfg.valid_metric}"]
            if score > result.best_metric:
                result.best_metric, result.best_epoch, bad = score, epoch + 1, 0
                best = replicas.snapshot(state) if state is not None else {}
            else:
                bad += 1
            if ckpt:
                opt_state = replicas.optimizer_state(opt)  # gathered on rank 0 under FSDP (every rank takes part)
                if state is not None and opt_state is not None:
                    save_checkpoint(ckpt, state, best, opt_state, {
                        "epoch": epoch, "bad_epochs": bad, "history": result.history,
                        "best_epoch": result.best_epoch, "best_metric": result.best_metric,
                        "seconds": result.seconds, "row_weights": [self._rows.rows, self._rows.batches],
                        "shard": replicas.shard, "processes": self.ranks.world})
            if self.on_epoch and self.ranks.main:
                self.on_epoch(row)
        replicas.release()
        self.net, self.trained = model, model
        if self.ranks.main:
            model.load_state_dict(best)
        model.eval()
        return result

    def _start(self, replicas: Replicas, opt: torch.optim.Optimizer, ckpt: Path | None
               ) -> tuple[FitResult, int, int, dict[str, torch.Tensor]]:
        """(result so far, first epoch, epochs without improvement, best weights): fresh, or from the
        checkpoint in ``ckpt`` when there is one. Rank 0 reads it; every rank gets its weights, optimizer
        state and loop state (the best weights stay on rank 0, the one that returns them)."""
        state = replicas.model_state()
        best = replicas.snapshot(state) if state is not None else {}
        self._rows = TargetWeighting()
        saved = read_checkpoint(ckpt) if self.ranks.main and ckpt and (ckpt / "state.json").exists() else None
        loop = broadcast(saved.loop if saved else None, self.ranks)  # rank 0 decides; the others follow
        if loop is None:
            return FitResult(), 0, 0, best
        if (loop.get("shard", "none") == "full") != (replicas.shard == "full"):
            raise SeqrecError(f"{ckpt}: this checkpoint was written with --shard {loop.get('shard', 'none')}; "
                              f"resume with the same --shard (and more than one process for full)")
        replicas.load(opt, saved.model if saved else None, saved.optimizer if saved else None)
        self._rows = TargetWeighting(*loop.get("row_weights", (0, 0)))
        result = FitResult(loop["history"], loop["best_epoch"], loop["best_metric"], loop["seconds"])
        return result, loop["epoch"] + 1, loop["bad_epochs"], saved.best if saved else {}

    def _fit_private(self, resume: bool) -> FitResult:
        """DP-SGD (seqrec.privacy.dp): Poisson-sampled users, one clipped gradient per user, Gaussian noise.
        The model kept is the last epoch's: choosing an epoch by validation metrics would spend privacy
        the accountant does not count, so patience and the best epoch play no part."""
        from seqrec.privacy import dp, touched

        model, cfg = self.model, self.cfg
        dp.check_supported(model, cfg, self.objective)
        windows = dp.UserWindows(self.train, self.max_len, cfg.sliding)
        plan = dp.plan(cfg, windows.n_users)
        opt = make_optimizer(model, cfg)
        params = [p for g in opt.param_groups for p in g["params"]]
        rows = touched.TouchedRows(model, params, windows) if touched.supported(model, cfg) else None
        result, start_epoch, history = FitResult(), 0, None
        ckpt = self.out_dir / "checkpoint" if self.out_dir else None
        if resume and ckpt and (ckpt / "state.json").exists():
            _, loop = load_checkpoint(ckpt, model, opt)
            if "accountant" not in loop:
                raise SeqrecError(f"{ckpt}: this checkpoint was not trained with DP-SGD, so its privacy spent is "
                                  "unknown; train from the start (without --resume) or without --dp-epsilon")
            start_epoch, history = loop["epoch"] + 1, loop["accountant"]
            result = FitResult(loop["history"], loop["best_epoch"], loop["best_metric"], loop["seconds"])
        acc = dp.Accountant(cfg.privacy.accountant, history)
        self.privacy = {"noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
                        "steps_per_epoch": plan.steps_per_epoch, "delta": plan.delta, "users": plan.n_users,
                        "clip": cfg.privacy.clip, "accountant": cfg.privacy.accountant,
                        "target_epsilon": cfg.privacy.epsilon,
                        "per_user_gradients": "batched, touched rows" if rows else "one user at a time"}
        total_steps = cfg.epochs * plan.steps_per_epoch
        assert cfg.privacy.epsilon is not None
        for epoch in range(start_epoch, cfg.epochs):
            ahead = acc.after(plan.noise_multiplier, plan.sample_rate, plan.steps_per_epoch, plan.delta)
            if ahead > cfg.privacy.epsilon * 1.01:  # Opacus calibrates to within 1% of the target
                result.stopped_by_budget = True
                break
            if cfg.max_seconds is not None and result.seconds >= cfg.max_seconds:
                result.stopped_by_time = True
                break
            t0 = time.perf_counter()
            loss = self._private_epoch(windows, opt, params, plan, acc, epoch, total_steps, rows)
            metrics = self.validate()
            t_end = time.perf_counter()
            row = {"epoch": epoch + 1, "loss": loss, **metrics, "epsilon": ahead,  # the accountant's, now
                   "seconds": t_end - t0}
            result.history.append(row)
            result.seconds += row["seconds"]
            result.best_epoch, result.best_metric = epoch + 1, metrics[f"valid_{cfg.valid_metric}"]
            if ckpt:
                save_checkpoint(ckpt, model.state_dict(), self._snapshot(), opt.state_dict(), {
                    "epoch": epoch, "bad_epochs": 0, "history": result.history, "best_epoch": result.best_epoch,
                    "best_metric": result.best_metric, "seconds": result.seconds, "accountant": acc.history})
            if self.on_epoch:
                self.on_epoch(row)
        self.privacy["epsilon"] = result.history[-1]["epsilon"] if result.history else acc.epsilon(plan.delta)
        self.privacy["accountant_history"] = acc.history
        model.eval()
        return result

    def _private_epoch(self, windows: Any, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                       plan: Any, acc: Any, epoch: int, total: int, rows: Any = None) -> float:
        from seqrec.privacy import dp

        cfg, model = self.cfg, self.model
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout; same stream after a resume
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # user sampling, negatives
        noise_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch + 7_919)
        model.train()
        losses: list[float] = []
        bar = tqdm(range(plan.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs} (DP)",
                   disable=not self.progress, leave=False, dynamic_ncols=True)
        for i in bar:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(epoch * plan.steps_per_epoch + i, total, cfg)
            users = dp.poisson_users(windows.n_users, plan.sample_rate, gen)
            opt.zero_grad(set_to_none=True)
            losses += dp.private_step(model, windows, users, params, cfg, plan, self.sampler, gen, noise_gen, rows)
            opt.step()
            acc.step(plan.noise_multiplier, plan.sample_rate)
        # the sampled users' mean loss: a diagnostic outside the DP guarantee, like the validation metrics
        return float(np.mean(losses)) if losses else 0.0

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().cpu() for k, v in self.model.state_dict().items()}

    def _fit_statistics(self) -> FitResult:
        fit_counts = getattr(self.model, "fit_counts", None)
        if fit_counts is not None:
            fit_counts(self.train.items)
        metrics = self.validate()
        return FitResult([{"epoch": 0, "loss": 0.0, **metrics, "seconds": 0.0}], 0,
                         metrics[f"valid_{self.cfg.valid_metric}"], 0.0)

    def _epoch(self, batches: TrainBatches, opt: torch.optim.Optimizer, epoch: int, total: int) -> float:
        cfg, model = self.cfg, self.net
        seed = cfg.seed * 100_003 + epoch
        torch.manual_seed(seed if self.ranks.world == 1 else seed + 7_919 * (self.ranks.rank + 1))  # dropout
        gen = torch.Generator().manual_seed(seed)  # batch order: the same on every rank
        # negatives and masks: one process draws them from the order's stream (so a resumed or
        # earlier run draws the same); several processes each need their own
        step_gen = gen if self.ranks.world == 1 else \
            torch.Generator().manual_seed(seed + 7_919 * (self.ranks.rank + 1))
        model.train()
        losses: list[float] = []
        bar = tqdm(batches.epoch(gen), total=len(batches), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (self.progress and self.ranks.main), leave=False, dynamic_ncols=True)
        for i, batch in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(epoch * len(batches) + i, total, cfg)
            loss = self._step(batch, opt, step_gen)
            losses.append(loss)
            if i % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        return float(np.mean(losses))

    def _step(self, batch: SequenceBatch, opt: torch.optim.Optimizer, gen: torch.Generator) -> float:
        if self.objective == "cloze" and self.model.mask_token is not None:
            batch = cloze(batch, self._cloze_window(batch), self.model.mask_token, self.cfg.mask_prob, gen,
                          int(self.model.config.max_len))
        assert batch.targets is not None
        targets = batch.targets.to(self.device)
        inputs = batch.inputs_on(self.device)  # items, times and user ids
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            query = self.net(inputs)  # (B, L, D)
            mask = targets > 0
            loss = compute_loss(LossInputs(query[mask], self.trained.item_table(), targets[mask], self.cfg.loss,
                                           self.sampler, gen))
        rows, total, factor = self._global_rows(mask, loss)
        if self.cfg.bucket:
            factor *= self._rows.weight(int(rows))
        opt.zero_grad(set_to_none=True)
        (loss * factor if factor != 1.0 else loss).backward()
        if self.cfg.grad_clip:
            clip_grad_norm(self.trained.parameters(), self.cfg.grad_clip)
        opt.step()
        return total / rows if self.ranks.active else float(loss.detach())

    def _global_rows(self, mask: torch.Tensor, loss: torch.Tensor) -> tuple[float, float, float]:
        """(targets, summed loss) over every rank's share of the global batch, and the factor that makes
        this rank's gradient, once DDP or FSDP averages it over the ranks, that of the global batch's
        mean loss: ``world * rows here / rows in all``. One process: (rows, loss * rows, 1)."""
        here = int(mask.sum())
        if not self.ranks.active:
            return float(here), float(loss.detach()) * here, 1.0
        sums = torch.stack([mask.sum().double(), loss.detach().double() * here])  # (2,) on the device
        rows, total = all_sum(sums, self.ranks).tolist()
        return rows, total, self.ranks.world * here / rows

    @staticmethod
    def _cloze_window(batch: SequenceBatch) -> torch.Tensor:
        """(B, W + 1) every event of each row: the W inputs and the last target. Bucketed batches trim
        the padding every row shares, so a full row's first event may sit in the first column."""
        assert batch.targets is not None
        last = torch.where(batch.targets[:, -1] > 0, batch.targets[:, -1], batch.items[:, -1])
        return torch.cat([batch.items, last[:, None]], 1)

    def validate(self, model: torch.nn.Module | None = None) -> dict[str, float]:
        """Validation metrics of ``model`` (default: the trainer's), by full ranking."""
        k = int(self.cfg.valid_metric.split("@")[1]) if "@" in self.cfg.valid_metric else 10
        cfg = EvalConfig(ks=(k,), exclude_seen=self.cfg.exclude_seen, batch_size=self.cfg.eval_batch_size)
        metrics = evaluate(cast(SequenceModel, model or self.model), self.valid, cfg)
        return {f"valid_{name}": v for name, v in metrics.items() if not name.startswith(("coverage", "Recall"))}


def fit(model: SequenceModel, split: Split, cfg: TrainConfig, out_dir: Path | None = None,
        resume: bool = False, progress: bool = True,
        on_epoch: Callable[[dict[str, float]], None] | None = None) -> FitResult:
    trainer = Trainer(model, split, cfg, out_dir, progress, on_epoch)
    result = trainer.fit(resume)
    result.privacy = trainer.privacy
    return result
