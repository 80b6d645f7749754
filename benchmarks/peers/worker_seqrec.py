"""seqrec's SASRec under the peers protocol (runs in the main venv)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def main() -> int:
    args, progress = common.start(__doc__ or "")
    import torch

    import seqrec
    from seqrec.data.io import read_log
    from seqrec.data.preprocess import build_dataset
    from seqrec.datasets import KNOWN
    from seqrec.losses import LossConfig
    from seqrec.runconfig import resolve_model
    from seqrec.settings import to_dict

    frame = read_log(args.data / "events.txt", KNOWN["amazon-beauty-bert4rec"].read)
    data = build_dataset(frame, name="peers", source=str(args.data / "events.txt"), header_rows=0)
    split = seqrec.leave_one_out(data)
    # the protocol fixes the model's size and window (as for the peers); training keeps seqrec's defaults
    model = resolve_model("sasrec", {"max_len": 50, "dim": 64, "n_layers": 2, "n_heads": 1})
    cfg = seqrec.TrainConfig(epochs=args.epochs, patience=args.patience, seed=args.seed, max_seconds=args.train_seconds,
                             device="cpu", bf16=args.bf16, loss=LossConfig(bf16_grads=args.ce_bf16_grads))
    rec = seqrec.Recommender("sasrec", cfg, **model)
    tool = "seqrec" + ("-bf16" if args.bf16 else "") + ("-bf16grads" if args.ce_bf16_grads else "")
    progress.write("meta", tool=tool, version=getattr(seqrec, "__version__", "?"),
                   torch=torch.__version__, threads=torch.get_num_threads(), n_users=data.n_users,
                   n_items=data.n_items, n_events=data.n_events, n_test_users=len(split.test.users),
                   settings={**model, "train_config": to_dict(cfg)},
                   defaults={**{k: model.get(k) for k in ("dropout", "norm_first", "tie_embeddings")},
                             "grad_clip": cfg.grad_clip, "weight_decay": cfg.weight_decay},
                   unmatched=["feed-forward width 64 (= dim, as in the SASRec paper); RecBole's default is 256",
                              "sliding windows: every training event is a target once (RecBole: one "
                              "target per prefix sample; RecTools: last 50 of each sequence only)"])
    progress.start_training()

    def on_epoch(row: dict[str, float]) -> None:
        progress.write("epoch", epoch=int(row["epoch"]), valid_ndcg10=row.get("valid_NDCG@10"),
                       epoch_seconds=row["seconds"], loss=row.get("loss"),
                       valid_eval_seconds=row.get("eval_seconds"))

    result = rec.fit(data, split, progress=False, on_epoch=on_epoch)
    progress.write("trained", best_epoch=result.best_epoch, best_valid=result.best_metric)
    t = time.perf_counter()
    test = rec.evaluate(ks=(10,))
    progress.write("test", ndcg10=test["NDCG@10"], hr10=test["HR@10"], eval_seconds=time.perf_counter() - t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
