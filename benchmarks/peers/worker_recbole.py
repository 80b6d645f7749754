"""RecBole's SASRec under the peers protocol (runs in .venvs/recbole)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


class OverBudget(Exception):
    pass


def main() -> int:
    args, progress = common.start(__doc__ or "")
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import numpy as np
    import recbole
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    settings: dict[str, Any] = {
        "data_path": str(args.data / "recbole"), "dataset": "beauty",
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": None, "item_inter_num_interval": None, "val_interval": None,
        "rm_dup_inter": None, "filter_inter_by_user_or_item": False,
        "loss_type": "CE", "train_neg_sample_args": None,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "MAX_ITEM_LIST_LENGTH": 50, "hidden_size": 64, "n_layers": 2, "n_heads": 1,
        "train_batch_size": 128, "eval_batch_size": 256, "learning_rate": 0.001,
        "metrics": ["NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10", "metric_decimal_place": 6,
        "epochs": args.epochs, "stopping_step": args.patience, "eval_step": 1,
        "seed": args.seed, "reproducibility": args.deterministic == "true", "device": "cpu", "use_gpu": False,
        "show_progress": False, "checkpoint_dir": str(args.out.parent / "recbole-saved"), "worker": 0,
    }
    config = Config(model="SASRec", dataset="beauty", config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    torch.set_num_threads(args.threads)  # init_seed / Config may reset it
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset).to("cpu")

    # RecBole 1.2.1's full sort does not exclude history items for sequential models (the
    # dataloader passes history_index=None); exclude each user's whole history here instead.
    uid, iid, tf = dataset.uid_field, dataset.iid_field, dataset.time_field
    users = dataset.inter_feat[uid].numpy()
    items = dataset.inter_feat[iid].numpy()
    order = np.lexsort((dataset.inter_feat[tf].numpy(), users))
    users, items = users[order], items[order]
    starts = np.searchsorted(users, np.arange(dataset.user_num + 1))
    phase = {"drop": 2}  # valid: history = all but the last two events; test: all but the last one

    def full_sort_predict(interaction: Any) -> torch.Tensor:
        scores = SASRec.full_sort_predict(model, interaction)
        rows, cols = [], []
        for r, u in enumerate(interaction[uid].tolist()):
            hist = items[starts[u]:max(starts[u], starts[u + 1] - phase["drop"])]
            rows.append(np.full(len(hist), r))
            cols.append(hist)
        if rows:
            scores[torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(cols))] = -torch.inf
        return scores

    model.full_sort_predict = full_sort_predict  # type: ignore[method-assign]
    n_users, n_items = dataset.user_num - 1, dataset.item_num - 1  # both count a padding id
    progress.write("meta", tool="recbole", version=recbole.__version__, torch=torch.__version__,
                   threads=torch.get_num_threads(), n_users=n_users, n_items=n_items, n_events=len(dataset.inter_feat),
                   n_test_users=len(test_data.dataset), settings=settings,
                   defaults={k: config[k] for k in ("inner_size", "hidden_dropout_prob", "attn_dropout_prob",
                                                   "hidden_act", "layer_norm_eps", "initializer_range",
                                                   "weight_decay", "learner")},
                   unmatched=["history exclusion is added by this worker: RecBole 1.2.1 does not exclude seen "
                              "items in full-sort evaluation of sequential models",
                              "training samples are every prefix of each training sequence with one target each "
                              "(data augmentation), so an epoch is ~events - 2*users samples",
                              "feed-forward (inner) size is RecBole's default 256, not 64",
                              "dropout 0.5 (hidden and attention), RecBole's default; no gradient clipping"])
    trainer = Trainer(config, model)
    valid_secs: dict[str, float | None] = {"last": None}
    inner_valid = trainer._valid_epoch

    def timed_valid(*a: Any, **k: Any) -> Any:  # the validation ranking's own time, as for the other tools
        t = time.perf_counter()
        out = inner_valid(*a, **k)
        valid_secs["last"] = time.perf_counter() - t
        return out

    trainer._valid_epoch = timed_valid  # type: ignore[method-assign]
    last = {"t": time.perf_counter()}
    progress.start_training()
    last["t"] = time.perf_counter()

    def on_epoch(epoch_idx: int, valid_score: float) -> None:
        now = time.perf_counter()
        seconds, last["t"] = now - last["t"], now
        progress.write("epoch", epoch=epoch_idx + 1, valid_ndcg10=float(valid_score), epoch_seconds=seconds,
                       loss=None, valid_eval_seconds=valid_secs["last"])
        if not progress.room_for_epoch(args.train_seconds, seconds):
            raise OverBudget

    stopped = "early stopping or epochs"
    try:
        trainer.fit(train_data, valid_data, verbose=False, saved=True, show_progress=False, callback_fn=on_epoch)
    except OverBudget:
        stopped = "training budget"
    progress.write("trained", best_valid=float(trainer.best_valid_score), stopped=stopped)
    phase["drop"] = 1
    t = time.perf_counter()
    test = trainer.evaluate(test_data, load_best_model=True, model_file=trainer.saved_model_file,
                            show_progress=False)
    progress.write("test", ndcg10=float(test["ndcg@10"]), hr10=float(test["hit@10"]),
                   eval_seconds=time.perf_counter() - t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
