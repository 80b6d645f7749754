"""RecTools' SASRecModel under the peers protocol (runs in .venvs/rectools).

Trains on all but each user's last two events, one ``fit_partial`` epoch at a time, and after each
epoch ranks for the validation target (second-to-last) itself; the test ranking uses the history up
to the second-to-last event, so the protocol matches seqrec's and RecBole's leave-one-out.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def main() -> int:
    args, progress = common.start(__doc__ or "")
    import numpy as np
    import pandas as pd
    import rectools
    import torch
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel

    ev = pd.read_csv(args.data / "events.txt", sep=" ", header=None, names=[Columns.User, Columns.Item])
    ev[Columns.Weight] = 1.0
    ev[Columns.Datetime] = pd.Timestamp("2000-01-01") + pd.to_timedelta(np.arange(len(ev)), unit="s")
    pos_from_end = ev.groupby(Columns.User).cumcount(ascending=False)
    length = ev.groupby(Columns.User)[Columns.Item].transform("size")
    evaluable = length >= 3  # as in seqrec: shorter users only train
    train_df = ev[~evaluable | (pos_from_end >= 2)]
    hist_df = ev[~evaluable | (pos_from_end >= 1)]
    valid_target = ev[evaluable & (pos_from_end == 1)].set_index(Columns.User)[Columns.Item]
    test_target = ev[evaluable & (pos_from_end == 0)].set_index(Columns.User)[Columns.Item]
    settings: dict[str, Any] = dict(loss="softmax", session_max_len=50, n_factors=64, n_blocks=2, n_heads=1,
                                    batch_size=128, lr=1e-3, epochs=1, deterministic=args.deterministic == "true",
                                    train_min_user_interactions=2, recommend_torch_device="cpu")
    torch.manual_seed(args.seed)
    model = SASRecModel(**settings)
    progress.write("meta", tool="rectools" + ("" if settings["deterministic"] else "-nondet"),
                   version=rectools.__version__, torch=torch.__version__, threads=torch.get_num_threads(),
                   n_users=int(ev[Columns.User].nunique()), n_items=int(ev[Columns.Item].nunique()),
                   n_events=len(ev), n_test_users=len(test_target), settings=settings,
                   defaults={"dropout_rate": 0.2, "feed_forward": "n_factors wide, ReLU", "use_pos_emb": True,
                             "weight_decay": 0.0},
                   unmatched=["catalog = items in the training split (items seen only as a validation or test "
                              "target cannot be ranked); seqrec and RecBole rank all items in the file",
                              "training uses each user's last 50+1 training events only (no sliding windows)",
                              "validation and early stopping are done by this worker (RecTools has no built-in "
                              "leave-one-out validation); the test uses the last epoch's weights, not the best's",
                              "users with 1 training event are dropped from training (train_min_user_interactions=2)"])
    train_ds = Dataset.construct(train_df)
    hist_ds = Dataset.construct(hist_df)

    def score(target: pd.Series, ds: Dataset, ranker: Any = model) -> tuple[float, float, float]:
        t = time.perf_counter()
        reco = ranker.recommend(users=target.index.to_numpy(), dataset=ds, k=10, filter_viewed=True,
                               on_unsupported_targets="warn")
        secs = time.perf_counter() - t
        hit = reco[reco[Columns.Item].to_numpy() == target.reindex(reco[Columns.User]).to_numpy()]
        ndcg = float((1.0 / np.log2(hit[Columns.Rank].to_numpy() + 1)).sum()) / len(target)
        return ndcg, len(hit) / len(target), secs

    # Ranking speed on a model fitted for two batches only (the cost of ranking does not depend on the
    # weights): one RecTools epoch on this file can take longer than the cap, leaving no test ranking.
    from pytorch_lightning import Trainer

    def two_batches() -> Trainer:
        return Trainer(max_epochs=1, limit_train_batches=2, deterministic=settings["deterministic"], logger=False,
                       enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, devices=1)

    probe = SASRecModel(**settings, get_trainer_func=two_batches)
    probe.fit(train_ds)
    progress.write("probe", eval_seconds=score(test_target, hist_ds, probe)[2], users=len(test_target))
    del probe
    torch.manual_seed(args.seed)  # the probe drew random numbers: the real model starts as before

    progress.start_training()
    best, bad, epoch, last = -1.0, 0, 0, 0.0
    while epoch < args.epochs and progress.room_for_epoch(args.train_seconds, last) and bad < args.patience:
        t = time.perf_counter()
        model.fit_partial(train_ds, min_epochs=1, max_epochs=1)
        epoch += 1
        valid, _, valid_secs = score(valid_target, train_ds)
        last = time.perf_counter() - t
        progress.write("epoch", epoch=epoch, valid_ndcg10=valid, epoch_seconds=last, loss=None,
                       valid_eval_seconds=valid_secs)
        best, bad = (valid, 0) if valid > best else (best, bad + 1)
    progress.write("trained", best_valid=best, epochs=epoch)
    ndcg, hr, secs = score(test_target, hist_ds)
    progress.write("test", ndcg10=ndcg, hr10=hr, eval_seconds=secs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
