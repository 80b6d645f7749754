"""The ``seqrec`` command line. The only module (with serve/settings.py) that reads argv or env."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seqrec.data.io import FORMATS, ReadOptions, read_log
from seqrec.data.preprocess import Dataset, PreprocessOptions, build_dataset
from seqrec.data.split import make_split
from seqrec.datasets import KNOWN, dataset_path, load_dataset
from seqrec.errors import SeqrecError
from seqrec.losses import LOSSES, SAMPLERS
from seqrec.models.layers import SIZES
from seqrec.models.registry import model_names
from seqrec.recommender import Recommender
from seqrec.report import metrics_table, table
from seqrec.serve.cli import add_parser as add_serve_parser
from seqrec.train.config import TrainConfig

DEFAULT_DATA_ROOT = os.environ.get("SEQREC_DATA_ROOT", "../shared/data")
MAIN_METRICS = ("HR@10", "NDCG@10", "MRR@10", "Recall@10", "coverage@10")


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k values must be positive integers, got {text!r}")
    return ks


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--dataset", help=f"a bundled or known dataset: {', '.join(KNOWN)}")
    src.add_argument("--data", type=Path,
                     help="path to an interaction log (csv/tsv/parquet/.dat/.inter/user-per-line, .gz ok)")
    g.add_argument("--data-root", type=Path, default=Path(DEFAULT_DATA_ROOT),
                   help="folder holding known datasets (default: $SEQREC_DATA_ROOT or ../shared/data)")
    g.add_argument("--format", choices=FORMATS, default="auto", help="log format (default: from the file)")
    g.add_argument("--sep", help="column separator (default: sniffed)")
    g.add_argument("--no-header", action="store_true", help="the file has no header; name columns 0, 1, ...")
    g.add_argument("--user-col", default="user_id")
    g.add_argument("--item-col", default="item_id")
    g.add_argument("--time-col", default="timestamp", help="time column; if absent, file order stands for time")
    g.add_argument("--rating-col", default=None)
    g.add_argument("--min-rating", type=float, help="keep events with rating >= this")
    g.add_argument("--user-core", type=int, default=0, help="iterative k-core: min events per user")
    g.add_argument("--item-core", type=int, default=0, help="iterative k-core: min events per item")
    g.add_argument("--drop-repeats", action="store_true", help="drop consecutive repeats of the same item")
    g.add_argument("--strict", action="store_true", help="stop at the first unparsable row instead of dropping it")
    g.add_argument("--split", choices=("leave-one-out", "temporal"), default="leave-one-out")
    g.add_argument("--valid-time", type=float, help="temporal split: validation cutoff (unix seconds)")
    g.add_argument("--test-time", type=float, help="temporal split: test cutoff (unix seconds)")


def _add_train_args(p: argparse.ArgumentParser, epochs: int = 20) -> None:
    g = p.add_argument_group("model and training")
    g.add_argument("--model", choices=model_names(), default="gru4rec")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--grad-clip", type=float, default=5.0)
    g.add_argument("--patience", type=int, default=5, help="early stopping on validation NDCG@10")
    g.add_argument("--valid-users", type=int, help="validate on a fixed random subset of this many users")
    g.add_argument("--train-rest-valid", action="store_true",
                   help="with --valid-users: the other users' validation events become training targets")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-len", type=int, default=50)
    g.add_argument("--size", choices=tuple(SIZES), help="size preset for sasrec/bert4rec/hstu (dim, layers, heads)")
    g.add_argument("--dim", type=int, help="item embedding size")
    g.add_argument("--hidden", type=int, help="recurrent hidden size")
    g.add_argument("--n-layers", type=int)
    g.add_argument("--n-heads", type=int)
    g.add_argument("--dropout", type=float)
    g.add_argument("--ff-dim", type=int, help="attention models: feed-forward width (default: per model)")
    g.add_argument("--l2-norm", action="store_true", default=None,
                   help="hstu: score by cosine / temperature (L2-normalised state and item embeddings)")
    g.add_argument("--temperature", type=float, help="hstu with --l2-norm (default 0.05)")
    g.add_argument("--original-norm", action="store_true", default=None,
                   help="sasrec: the original SASRec code's layer-norm placement (normalised queries only)")
    g.add_argument("--positions", choices=("start", "end"),
                   help="sasrec/bert4rec: learned positions counted from the first item (default) or "
                   "back from the last")
    g.add_argument("--loss", choices=LOSSES, default="ce")
    g.add_argument("--negatives", type=int, default=1, help="negatives per target (bce/gbce) or per batch (sampled)")
    g.add_argument("--sampler", choices=SAMPLERS, default="uniform")
    g.add_argument("--per-target-negatives", action="store_true",
                   help="sampled softmax: draw --negatives for every target instead of once per batch "
                   "(uniform/popularity samplers)")
    g.add_argument("--logq", action=argparse.BooleanOptionalAction, default=True,
                   help="logQ correction for sampled softmax")
    g.add_argument("--gbce-t", type=float, default=0.75, help="gBCE calibration t")
    g.add_argument("--objective", choices=("next", "cloze"), help="default: the model's own")
    g.add_argument("--mask-prob", type=float, default=0.2, help="cloze objective masking probability")
    g.add_argument("--warmup-steps", type=int, default=0)
    g.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the encoder (CPU or CUDA)")
    g.add_argument("--ce-bf16-grads", action="store_true",
                   help="full CE: the catalog softmax's two gradient matmuls on bf16 operands (AMX / tensor cores; "
                        "logits, exp and sums stay fp32; gradients differ by ~0.1-0.4%%)")
    g.add_argument("--no-sliding", action="store_true", help="one training window per user (most recent)")
    g.add_argument("--no-bucket", action="store_true", help="random batches, not grouped by length "
                   "(slower; bucketed batches weigh every target alike, as random ones do)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    g.add_argument("--out", type=Path, help="artifact directory to write")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    g.add_argument("--k", type=_ks, default=(5, 10, 20), help="cut-offs for the test metrics, e.g. 5,10,20")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def read_dataset(args: argparse.Namespace) -> Dataset:
    opts = PreprocessOptions(min_rating=args.min_rating, drop_consecutive_repeats=args.drop_repeats,
                             user_core=args.user_core, item_core=args.item_core, strict=args.strict)
    if args.data is not None:
        read = ReadOptions(args.format, args.sep, not args.no_header, args.user_col, args.item_col,
                           args.time_col, args.rating_col)
        frame = read_log(args.data, read)
        return build_dataset(frame, opts, name=args.data.name, source=str(args.data),
                             header_rows=int(read.header))
    return load_dataset(args.dataset or "movielens-latest-small", args.data_root, opts)


def train_config(args: argparse.Namespace) -> TrainConfig:
    if args.epochs < 0 or args.batch_size < 1 or args.max_len < 1 or args.lr <= 0:
        raise SeqrecError("--epochs must be >= 0, --batch-size and --max-len >= 1, --lr > 0")
    if args.valid_users is not None and args.valid_users < 1:
        raise SeqrecError("--valid-users must be >= 1")
    if args.train_rest_valid and args.valid_users is None:
        raise SeqrecError("--train-rest-valid needs --valid-users N (the users whose validation events stay held out)")
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, grad_clip=args.grad_clip or None,
                       patience=args.patience, seed=args.seed, max_len=args.max_len, loss=args.loss,
                       n_negatives=args.negatives, sampler=args.sampler, logq=args.logq, gbce_t=args.gbce_t,
                       shared_negatives=not args.per_target_negatives,
                       objective=args.objective, mask_prob=args.mask_prob, warmup_steps=args.warmup_steps,
                       schedule=args.schedule, bf16=args.bf16, ce_bf16_grads=args.ce_bf16_grads,
                       sliding=not args.no_sliding, bucket=not args.no_bucket,
                       device=args.device, valid_users=args.valid_users,
                       train_rest_valid=args.train_rest_valid)


def model_params(args: argparse.Namespace) -> dict[str, Any]:
    names = ("size", "dim", "hidden", "n_layers", "n_heads", "dropout", "ff_dim", "l2_norm", "temperature",
             "positions", "original_norm")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def print_dataset(data: Dataset) -> None:
    s = data.stats()
    print(f"dataset {data.name}: {s['users']:,} users, {s['items']:,} items, {s['events']:,} events, "
          f"mean length {s['mean_length']:.1f}, median {s['median_length']:.0f}, density {s['density']:.5f}")
    if data.report:
        for line in data.report.lines():
            print(f"  {line}")


def _epoch_printer(quiet: bool) -> Any:
    def show(row: dict[str, float]) -> None:
        if not quiet:
            print(f"  epoch {int(row['epoch']):3d}  loss {row['loss']:.4f}  valid NDCG@10 "
                  f"{row.get('valid_NDCG@10', float('nan')):.4f}  HR@10 {row.get('valid_HR@10', float('nan')):.4f}"
                  f"  {row['seconds']:.1f}s", flush=True)
    return show


def cmd_train(args: argparse.Namespace) -> int:
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise SeqrecError(f"{args.out}: exists and is not a directory; choose another --out")
    data = read_dataset(args)
    print_dataset(data)
    split = make_split(data, args.split, args.valid_time, args.test_time)
    cfg = train_config(args)
    results: dict[str, dict[str, float]] = {}
    if args.model != "popular":
        base = Recommender("popular", cfg)
        base.fit(data, split, progress=False)
        results["popular"] = base.evaluate(ks=args.k)
    rec = Recommender(args.model, cfg, **model_params(args))
    print(f"training {args.model} ...", flush=True)
    rec.fit(data, split, out_dir=args.out, resume=args.resume, progress=not args.quiet,
            on_epoch=_epoch_printer(args.quiet))
    print(f"{args.model}: {rec.info['n_parameters']:,} parameters, best epoch {rec.info['best_epoch']}")
    results[args.model] = rec.evaluate(ks=args.k)
    rec.info["test_metrics"] = results[args.model]
    rec.info.update(valid_time=args.valid_time, test_time=args.test_time)
    rec.info["baseline_test_metrics"] = results.get("popular")
    names = [f"{m}@{k}" for k in args.k for m in ("HR", "NDCG", "MRR")]
    print(f"\ntest metrics (full ranking over {data.n_items:,} items, seen items excluded):")
    print(metrics_table(results, names))
    if args.out:
        rec.save(args.out)
        print(f"\nartifact written to {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    rec = Recommender.load(args.artifact)
    metrics = rec.evaluate(on=args.on, ks=args.k, exclude_seen=not args.include_seen,
                           sampled=args.sampled, n_negatives=args.negatives)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    label = f"SAMPLED ({args.negatives} {args.sampled} negatives)" if args.sampled else "full ranking"
    print(f"{rec.model_name} on {args.on} ({label}):")
    print(table(["metric", "value"], sorted(metrics.items())))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    rec = Recommender.load(args.artifact)
    if args.user is None and args.history is None:
        raise SeqrecError("give --user ID or --history ITEM,ITEM,...")
    if args.user is not None:
        frame = rec.recommend([args.user], k=args.k, exclude_seen=not args.include_seen)
    else:
        history = [h.strip() for h in args.history.split(",") if h.strip()]
        frame = rec.recommend_history(history, k=args.k, exclude_seen=not args.include_seen)
    cols = [c for c in ("rank", "item_id", "score", "title") if c in frame]
    print(table(cols, list(frame[cols].itertuples(index=False))))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    rows = []
    for name, info in KNOWN.items():
        path = dataset_path(name, args.data_root)
        where = "bundled" if info.bundled else ("found" if path.exists() else f"not found under {args.data_root}")
        rows.append([name, where, info.description])
    print(table(["name", "status", "description"], rows))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from seqrec.plot import plot_history

    out = plot_history(args.run, args.output)
    print(f"learning curves written to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from seqrec.demo import run_demo

    return run_demo(args.out, args.epochs, args.model, quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqrec", description="Sequential recommendation: train, evaluate "
                                     "by full ranking, recommend and serve next-item models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("demo", help="train on the bundled MovieLens data and show recommendations")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where to save the demo artifact")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--model", choices=model_names(), default="gru4rec")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("train", help="train a model and write an artifact")
    _add_data_args(p)
    _add_train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="evaluate an artifact by full ranking (or, on request, sampled)")
    p.add_argument("artifact", type=Path)
    p.add_argument("--on", choices=("test", "valid"), default="test")
    p.add_argument("--k", type=_ks, default=(1, 5, 10, 20))
    p.add_argument("--include-seen", action="store_true", help="do not exclude already-seen items")
    p.add_argument("--sampled", choices=("uniform", "popularity"),
                   help="rank against sampled negatives instead of the catalog (labelled 'sampled')")
    p.add_argument("--negatives", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("recommend", help="top-k for a known user or an ad-hoc history")
    p.add_argument("artifact", type=Path)
    who = p.add_mutually_exclusive_group()
    who.add_argument("--user", help="a user id from the training data")
    who.add_argument("--history", help="comma-separated item ids, oldest first")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--include-seen", action="store_true")
    p.set_defaults(func=cmd_recommend)
    p = sub.add_parser("datasets", help="list bundled and known datasets")
    p.add_argument("--data-root", type=Path, default=Path(DEFAULT_DATA_ROOT))
    p.set_defaults(func=cmd_datasets)
    p = sub.add_parser("plot", help="draw a run's learning curves (loss, validation metrics) to a PNG")
    p.add_argument("run", type=Path, help="an artifact directory written by `seqrec train --out`")
    p.add_argument("--output", type=Path, help="PNG path (default: RUN/curves.png)")
    p.set_defaults(func=cmd_plot)
    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SeqrecError as exc:
        print(f"seqrec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seqrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
