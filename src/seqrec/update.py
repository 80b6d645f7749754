"""`seqrec update ARTIFACT --data NEW_EVENTS --out NEW`: fold the events logged since training into an artifact.

New users and new items are appended to the id maps, so every id the artifact knew keeps its internal index
(a service can swap to the result with ``POST /v1/admin/reload``). The model grows by the new items' rows:
where the artifact embeds items from attributes or text (a feature/text tower) and ``--items`` gives the new
items' rows, they start from those (their id vector, if any, at zero, as for items scored without training);
otherwise they start from the model's fresh initialisation. Then the model is fine-tuned for ``--epochs`` on
the whole sequences of the users who have new events (popularity is recounted instead).

Rows that cannot be used are counted and reported, never an error: an id that is not an integer where the
artifact's ids are integers, an empty id.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from seqrec.artifact import Artifact, load_artifact, save_artifact
from seqrec.data.features import ItemFeaturesConfig
from seqrec.data.ids import IdMap
from seqrec.data.io import ReadOptions, read_log
from seqrec.data.preprocess import Dataset
from seqrec.data.sequences import Sequences
from seqrec.data.split import EvalSet, Split
from seqrec.errors import SeqrecError
from seqrec.items.features import FeatureTower, build_with_tower, tower_spec_of
from seqrec.models.base import SequenceModel
from seqrec.models.popular import PopularModel
from seqrec.models.registry import build_model
from seqrec.settings import from_dict
from seqrec.train.config import TrainConfig
from seqrec.train.loop import fit


@dataclass(frozen=True)
class UpdateReport:
    artifact: str
    previous_version: str
    model_version: str
    events: int  # rows of the new log used
    skipped_rows: int  # rows whose ids cannot be used (reported, not an error)
    new_users: int
    new_items: int
    users_with_events: int  # users (new and known) whose sequences grew
    items_from_features: int  # new items whose rows start from their attributes/text
    epochs: int


@dataclass(frozen=True)
class NewEvents:
    users: np.ndarray  # (E,) internal user ids of the updated map
    items: np.ndarray  # (E,) internal item ids of the updated map
    times: np.ndarray | None  # (E,) float64
    skipped: int


def extend_ids(ids: IdMap, raw: pd.Series) -> tuple[IdMap, np.ndarray, np.ndarray]:
    """(the map with ``raw``'s unknown ids appended in order of first appearance, each row's internal id or -1
    for a row that cannot be used, the mask of usable rows)."""
    numeric = ids.external.dtype.kind in "iu"
    text = raw.astype(str).str.strip()
    if numeric:
        usable = text.str.fullmatch(r"[+-]?\d{1,18}").to_numpy(dtype=bool)
        values = np.zeros(len(text), dtype=np.int64)
        values[usable] = text[usable].astype(np.int64).to_numpy()
        values_obj: np.ndarray = values
    else:
        usable = (text.str.len() > 0).to_numpy(dtype=bool)
        values_obj = text.to_numpy(dtype=object)
    known = np.full(len(text), -1, dtype=np.int64)
    if usable.any():
        known[usable] = ids.to_internal(values_obj[usable], strict=False)
    fresh_mask = usable & (known < 0)
    fresh = pd.unique(pd.Series(values_obj[fresh_mask]))
    external = np.concatenate([ids.external, np.asarray(fresh, dtype=ids.external.dtype)])
    grown = IdMap(external, ids.offset)
    internal = np.full(len(text), -1, dtype=np.int64)
    if usable.any():
        internal[usable] = grown.to_internal(values_obj[usable], strict=False)
    return grown, internal, usable


def read_new_events(path: Path, options: ReadOptions, data: Dataset) -> tuple[Dataset, NewEvents]:
    """The dataset with the new users and items appended to its id maps (sequences not yet grown), and the
    new events in time order (file order for equal times or without a time column)."""
    frame = read_log(path, options)
    users, u_int, u_ok = extend_ids(data.users, frame["user"])
    items, i_int, i_ok = extend_ids(data.items, frame["item"])
    ok = u_ok & i_ok
    times = None
    if "time" in frame.columns:
        t = pd.to_numeric(frame["time"], errors="coerce").to_numpy(dtype=np.float64)
        ok &= np.isfinite(t)
        times = t
    elif data.sequences.times is not None:
        raise SeqrecError(f"{path}: the artifact's events carry times, so the new events need a time column "
                          "(--time-col)")
    rows = np.flatnonzero(ok)
    if times is not None:
        rows = rows[np.argsort(times[rows], kind="stable")]
    # ids that only appear on unusable rows were appended too: drop them again so no id lacks an event
    users = IdMap(users.external[: len(data.users) + _n_new(data.users, u_int[rows])], users.offset)
    items = IdMap(items.external[: len(data.items) + _n_new(data.items, i_int[rows])], items.offset)
    titles = data.item_titles
    if titles is not None:
        titles = [*titles, *(str(v) for v in items.external[len(data.items):].tolist())]
    grown = replace(data, users=users, items=items, item_titles=titles)
    return grown, NewEvents(u_int[rows], i_int[rows], None if times is None else times[rows], int((~ok).sum()))


def _n_new(ids: IdMap, internal: np.ndarray) -> int:
    """How many appended ids the kept rows use (appended ids are numbered in order of first appearance)."""
    first_new = len(ids) + ids.offset
    used = internal[internal >= first_new]
    return int(used.max() - first_new + 1) if len(used) else 0


def grow_sequences(seqs: Sequences, n_users: int, new: NewEvents) -> Sequences:
    """Each user's sequence with their new events appended (new users: the new events alone)."""
    order = np.argsort(new.users, kind="stable")  # time order kept within a user
    counts = np.bincount(new.users, minlength=n_users)
    old_lengths = np.zeros(n_users, dtype=np.int64)
    old_lengths[: seqs.n_users] = seqs.lengths
    lengths = old_lengths + counts
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = np.empty(int(offsets[-1]), dtype=np.int64)
    times = None if seqs.times is None or new.times is None else np.empty(len(items), dtype=np.float64)
    # positions: old events first, then the new ones of that user
    old_pos = np.concatenate([np.arange(offsets[u], offsets[u] + old_lengths[u]) for u in range(seqs.n_users)]
                             or [np.zeros(0, dtype=np.int64)])
    items[old_pos] = seqs.items
    starts = offsets[:-1] + old_lengths
    sorted_users = new.users[order]
    rank = np.arange(len(order)) - np.concatenate([[0], np.cumsum(counts)])[sorted_users]
    new_pos = starts[sorted_users] + rank
    items[new_pos] = new.items[order]
    if times is not None:
        assert seqs.times is not None and new.times is not None
        times[old_pos] = seqs.times
        times[new_pos] = new.times[order]
    return Sequences(offsets, items, times)


def grow_model(art: Artifact, n_items: int) -> SequenceModel:
    """The artifact's model with rows for ``n_items`` items: every tensor with a row per item keeps its old
    rows (padding, items, extra tokens such as BERT4Rec's mask after them); new rows keep their fresh init."""
    old = art.model
    if getattr(old, "user_tower", None) is not None:
        raise SeqrecError("this artifact has a user-feature tower; `seqrec update` cannot add users to it yet: "
                          "retrain with the new events")
    n_old = int(old.config.n_items)
    config = replace(old.config, n_items=n_items)
    torch.manual_seed(int(art.train_config.get("seed", 0)))
    spec = tower_spec_of(old)
    model = build_model(art.model_name, config) if spec is None else build_with_tower(art.model_name, config, spec)
    own, theirs = model.state_dict(), old.state_dict()
    with torch.no_grad():
        for key, value in theirs.items():
            target = own.get(key)
            if target is None:
                raise SeqrecError(f"cannot grow {art.model_name}: {key} has no place in the grown model")
            if target.shape == value.shape:
                target.copy_(value)
                continue
            extra = value.shape[0] - n_old - 1
            if target.shape[1:] != value.shape[1:] or target.shape[0] - n_items - 1 != extra or extra < 0:
                raise SeqrecError(f"cannot grow {art.model_name}: {key} is {tuple(value.shape)}, not a row per item")
            target[: n_old + 1] = value[: n_old + 1]
            if extra:
                target[n_items + 1:] = value[n_old + 1:]
    return model.eval()


def start_from_features(model: SequenceModel, art: Artifact, items: IdMap, path: Path) -> int:
    """Give the new items (internal ids after the artifact's) their attribute/text rows from ``path``; their id
    vectors start at zero. Returns how many new items the file described."""
    from seqrec.items.new_items import read_new_items

    tower = getattr(model, "tower", None)
    if not isinstance(tower, FeatureTower) or not (tower.spec.uses_features or tower.spec.uses_text):
        raise SeqrecError("--items: this artifact embeds item ids only; new items start from a fresh init")
    n_old = len(art.dataset.items)
    config = _items_config(art)
    new = read_new_items(path, tower.spec, art.dataset.items, config)
    rows = items.to_internal(new.ids, strict=False)
    keep = rows > n_old  # items of the file that have no event are not added
    idx = torch.from_numpy(rows[keep])
    sel = torch.from_numpy(np.flatnonzero(keep))
    with torch.no_grad():
        if new.features is not None:
            for i, cat in enumerate(new.features.cat):
                getattr(tower, f"cat_{i}")[idx] = cat[sel].to(getattr(tower, f"cat_{i}").dtype)
            if new.features.num is not None:
                tower.num[idx] = new.features.num[sel].to(tower.num.dtype)
        if new.text is not None:
            tower.text[idx] = new.text[sel].to(tower.text.dtype)
        if tower.spec.uses_id:  # no trained id vector, own output row or bias: zeros, as for items scored untrained
            tower.id_emb.weight[idx] = 0.0
            if tower.output is not None:
                tower.output.weight[idx] = 0.0
                if isinstance(tower.output, torch.nn.Linear) and tower.output.bias is not None:
                    tower.output.bias[idx] = 0.0
        if tower.bias is not None:
            tower.bias[idx] = 0.0
    return int(keep.sum())


def _items_config(art: Artifact) -> ItemFeaturesConfig:
    raw = (art.data_config or {}).get("items") or {}
    try:
        return from_dict(ItemFeaturesConfig, raw, "config.toml [data.items]")
    except SeqrecError:
        return ItemFeaturesConfig()


def _read_options(art: Artifact, overrides: dict[str, Any]) -> ReadOptions:
    base: dict[str, Any] = dict((art.data_config or {}).get("read") or {})
    base.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(ReadOptions, base, "the read options")


def fine_tune_split(seqs: Sequences, users: np.ndarray, n_items: int) -> Split:
    """Train on the whole sequences of ``users`` (the others' rows empty); validate on their last events, which
    are trained on too: the numbers show progress only."""
    lengths = seqs.lengths
    train_lengths = np.zeros(seqs.n_users, dtype=np.int64)
    train_lengths[users] = lengths[users]
    keep = np.zeros(len(seqs.items), dtype=bool)
    for u in users.tolist():
        keep[seqs.offsets[u]: seqs.offsets[u + 1]] = True
    train = Sequences.from_lengths(train_lengths, seqs.items[keep], None if seqs.times is None else seqs.times[keep])
    judged = users[lengths[users] >= 2]
    if len(judged):
        history = seqs.subset(judged).truncate_tail(np.ones(len(judged), dtype=np.int64))
    else:  # only one-event users: their event is both input and target (progress numbers only)
        judged = users
        history = seqs.subset(judged)
    targets = np.array([seqs.get(u)[-1] for u in judged.tolist()], dtype=np.int64)
    valid = EvalSet(judged, history, targets)
    return Split(train, valid, valid, n_items, "update")


def update_artifact(path: Path, data: Path, out: Path, epochs: int = 1, lr: float | None = None,
                    items_file: Path | None = None, read: dict[str, Any] | None = None,
                    progress: bool = False) -> UpdateReport:
    """Write the updated artifact to ``out``; ``read``: read options overriding how the training log was read."""
    from seqrec.serve.index import model_version

    art = load_artifact(path)
    if art.info.get("histories") is False:
        raise SeqrecError(f"{path}: written without per-user histories (pseudonymised users); new events cannot "
                          "be added to histories it does not hold: retrain")
    cfg = from_dict(TrainConfig, art.train_config, "config.toml [train]")
    if cfg.privacy.enabled:
        raise SeqrecError(f"{path}: trained with differential privacy; fine-tuning here would spend budget the "
                          "artifact does not account for: retrain with the new events")
    grown, new = read_new_events(data, _read_options(art, read or {}), art.dataset)
    seqs = grow_sequences(art.dataset.sequences, len(grown.users), new)
    grown = replace(grown, sequences=seqs)
    model = grow_model(art, len(grown.items))
    from_features = start_from_features(model, art, grown.items, items_file) if items_file is not None else 0
    touched = np.unique(new.users)
    run_epochs = 0
    if isinstance(model, PopularModel):
        model.fit_counts(seqs.items)
    elif len(touched) and epochs > 0:
        tune = replace(cfg, epochs=epochs, lr=cfg.lr if lr is None else lr, valid_users=None,
                       train_rest_valid=False, max_seconds=None)
        result = fit(model, fine_tune_split(seqs, touched, len(grown.items)), tune, None, False, progress)
        run_epochs = len(result.history)
    model.eval()
    info = {**art.info, "updated_from": model_version(art),
            "update": {"events": len(new.users), "skipped_rows": new.skipped, "epochs": run_epochs}}
    updated = Artifact(art.model_name, model, grown, art.train_config, info, art.data_config)
    save_artifact(out, updated)
    version = model_version(load_artifact(out))
    return UpdateReport(str(out), model_version(art), version, len(new.users), new.skipped,
                        len(grown.users) - len(art.dataset.users), len(grown.items) - len(art.dataset.items),
                        len(touched), from_features, run_epochs)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the `update` subcommand."""
    p = sub.add_parser("update", help="fine-tune an artifact on new events, adding new users and items",
                       description="Append the users and items of NEW_EVENTS to the artifact's id maps (every known "
                       "id keeps its internal index, so a service can reload the result), grow the model by the "
                       "new items' rows, fine-tune it on the sequences of the users with new events, and write a "
                       "new artifact. Prints a JSON report: events used, rows skipped, new users and items.")
    p.add_argument("artifact", type=Path, help="an artifact directory written by `seqrec train --out`")
    p.add_argument("--data", type=Path, required=True, metavar="NEW_EVENTS",
                   help="the events since training (a log like the training one)")
    p.add_argument("--out", type=Path, required=True, metavar="NEW", help="directory of the updated artifact")
    p.add_argument("--force", action="store_true", help="replace an artifact already at --out")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs (default: 1; 0 only adds the ids)")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate (default: the artifact's)")
    p.add_argument("--items", type=Path, help="the new items' attributes/text (for an artifact with a feature or "
                   "text tower): their rows start from these")
    for flag, what in (("--format", "log format"), ("--sep", "column separator"), ("--user-col", "user id column"),
                       ("--item-col", "item id column"), ("--time-col", "event time column")):
        p.add_argument(flag, help=f"{what} (default: as the artifact's training log was read)")
    p.add_argument("--progress", action="store_true", help="show training progress")
    p.set_defaults(func=cmd_update)


def cmd_update(args: argparse.Namespace) -> int:
    if args.epochs < 0:
        raise SeqrecError(f"--epochs {args.epochs}: must be 0 or more")
    if args.out.exists() and (args.out / "config.toml").exists() and not args.force:
        raise SeqrecError(f"{args.out}: holds an artifact already; pass --force to overwrite it, or choose another "
                          "--out")
    if args.out.resolve() == args.artifact.resolve():
        raise SeqrecError("--out is the artifact itself; write the update beside it")
    read = {name: getattr(args, name) for name in ("format", "sep", "user_col", "item_col", "time_col")}
    report = update_artifact(args.artifact, args.data, args.out, args.epochs, args.lr, args.items, read,
                             args.progress)
    print(json.dumps(asdict(report)))
    return 0
