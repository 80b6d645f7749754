"""The ``seqrec`` command line. The only module (with serve/settings.py) that reads argv or env.

The settings flags of ``seqrec train`` are generated from the config dataclasses: ``--model``
(:class:`RunConfig`), every model config's fields, :class:`TrainConfig` with its :class:`LossConfig`,
and :class:`DataConfig` with its read and preprocess options. ``--config FILE`` reads the same
settings from TOML; flags given on the command line override the file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, cast

import pandas as pd

from seqrec import __version__, tracking
from seqrec.atomic import replace_file
from seqrec.blend import add_parser as add_blend_parser
from seqrec.data.config import DataConfig, split_data
from seqrec.data.preprocess import Dataset
from seqrec.datasets import KNOWN, dataset_path
from seqrec.demo import DEMO_CONFIG
from seqrec.errors import SeqrecError
from seqrec.eval.evaluate import EvalConfig
from seqrec.export import add_parser as add_export_parser
from seqrec.items.features import prepare_inputs
from seqrec.items.transfer import transfer_hook
from seqrec.models.layers import SIZES
from seqrec.models.registry import MODELS, model_names
from seqrec.prepare import add_parser as add_prepare_parser
from seqrec.privacy import commands as privacy_commands
from seqrec.privacy.ids import ENV_KEY, pseudonym, verify_key
from seqrec.recommender import Recommender
from seqrec.report import metrics_table, table
from seqrec.runconfig import RunConfig, not_applicable, run_config_dict, run_config_from_dict, setting_names, size_keys
from seqrec.serve.cli import add_parser as add_serve_parser
from seqrec.settings import (
    Flag,
    add_flag,
    check_choice,
    check_given,
    check_value,
    deep_merge,
    default_of,
    flag_help,
    flags_of,
    given,
    load_toml,
    nearest,
    to_dict,
    type_hints,
    value_at,
)
from seqrec.train import distributed
from seqrec.train.checkpoint import checkpoint_epoch
from seqrec.train.config import PrivacyConfig
from seqrec.tune import add_parser as add_tune_parser
from seqrec.update import add_parser as add_update_parser

ENV_DATA_ROOT = "SEQREC_DATA_ROOT"
ENV_PSEUDONYM_KEY = ENV_KEY  # the pseudonymisation key, when no --pseudonymise-users KEYFILE is given
FORMATS_OUT = ("table", "json", "csv")
UNREADABLE_WARNING = 0.10  # warn when more than this share of the rows cannot be read


def _eval_help(name: str) -> str:
    """An EvalConfig field's help text with its default."""
    f = next(f for f in fields(EvalConfig) if f.name == name)
    return f"{f.metadata['help']} (default: {f.default})"
# flag spellings for fields whose class sets none
RENAMES: dict[str, str] = {}
GROUPS = {("model",): "model", ("train",): "training", ("train", "loss"): "loss",
          ("train", "privacy"): "differential privacy (docs/privacy.md)",
          ("data",): "data", ("data", "read"): "reading a --data file", ("data", "preprocess"): "cleaning the log"}


class _Formatter(argparse.HelpFormatter):
    """Help lines wrapped at spaces only, so that a flag such as --no-original-norm stays whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one-line SeqrecErrors (``main`` prints them, exit status 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise SeqrecError(f"{message}; see `{self.prog} --help`")


def ks_arg(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k values must be positive integers, got {text!r}")
    return ks


def data_root_default() -> str:
    """Where known datasets live: $SEQREC_DATA_ROOT, else DataConfig's default."""
    return os.environ.get(ENV_DATA_ROOT) or DataConfig().data_root


# ---- settings flags, generated from the config dataclasses --------------------------------------


@dataclass(frozen=True)
class ModelFlag:
    """A model setting's flag: one for every model that takes the setting."""

    flag: Flag  # path ("model", setting); help and type from the first model declaring it
    defaults: dict[str, Any]  # model name -> its default, for the models that take it

    def help(self) -> str:
        models = "all" if len(self.defaults) == len(MODELS) else ", ".join(self.defaults)
        values = list(self.defaults.values())
        common = max(values, key=values.count)
        others = {self.flag.show(v): [m for m, w in self.defaults.items() if w == v] for v in values if v != common}
        default = self.flag.show(common) + "".join(f"; {v} for {', '.join(ms)}" for v, ms in others.items())
        return f"{self.flag.help} (models: {models}; default: {default})"


@dataclass(frozen=True)
class RunFlags:
    """The settings flags of a training command."""

    model: Flag  # --model, written to [model] name
    models: list[ModelFlag]
    config: list[Flag]  # [train] and [data] settings

    def all(self) -> list[Flag]:
        return [self.model, *(m.flag for m in self.models), *self.config]


def model_flags() -> list[ModelFlag]:
    """One flag per setting of any registered model (n_items, set from the data, has none)."""
    found: dict[str, ModelFlag] = {}
    for name, (cls, _) in MODELS.items():
        for flag in flags_of(cls, ("model",), exclude=("model.n_items",)):
            found.setdefault(flag.dest, ModelFlag(flag, {})).defaults[name] = default_of(flag.field)
    return list(found.values())


def run_flags(with_data: bool = True, exclude: Iterable[str] = ()) -> RunFlags:
    """The flags for RunConfig's settings; ``exclude`` drops dotted paths such as ``train.max_seconds``."""
    model = next(f for f in flags_of(RunConfig) if f.path == ("model",))
    config = flags_of(RunConfig, exclude=("model", *exclude, *(() if with_data else ("data",))), renames=RENAMES)
    flags = RunFlags(Flag(("model", "name"), model.field, model.hint, model.names), model_flags(), config)
    names = [n for f in flags.all() for n in f.names]
    if len(names) != len(set(names)):
        raise AssertionError(f"two settings share a flag: {sorted(n for n in names if names.count(n) > 1)}")
    return flags


def add_run_flags(parser: argparse.ArgumentParser, base: RunConfig, with_data: bool = True,
                  exclude: Iterable[str] = ()) -> RunFlags:
    """Add the settings flags to ``parser``; help texts show ``base``'s values as the defaults."""
    flags = run_flags(with_data, exclude)
    groups: dict[tuple[str, ...], Any] = {}

    def group(path: tuple[str, ...]) -> Any:
        if path not in groups:
            groups[path] = parser.add_argument_group(GROUPS.get(path, ".".join(path)))
        return groups[path]

    add_flag(group(("model",)), flags.model, flag_help(flags.model, base.model))
    group(("model",)).add_argument(
        "--size", dest="model.size", default=argparse.SUPPRESS, metavar="{" + ",".join(SIZES) + "}",
        help="size preset (dim, n_layers, n_heads, ff_dim) of the attention models; explicit settings override it")
    for model_flag in flags.models:
        add_flag(group(("model",)), model_flag.flag, model_flag.help())
    for flag in flags.config:
        add_flag(group(flag.path[:-1]), flag, flag_help(flag, value_at(base, flag.path)))
    return flags


def run_config_from_args(args: argparse.Namespace, flags: RunFlags, base: RunConfig,
                         config: Path | None = None) -> RunConfig:
    """``base``, then the ``config`` file, then the flags given on the command line."""
    lower: dict[str, Any] = {"model": {"name": base.model}, "train": to_dict(base.train), "data": to_dict(base.data)}
    where = ""
    if config is not None:
        file = load_toml(config)
        run_config_from_dict(file, str(config))  # the file alone must be valid: its errors name it
        lower = deep_merge(lower, file)
        where = f"{config} with the command line"
    check_given(args, [flags.model, *flags.config])
    cli = given(args, [flags.model, *flags.config])
    model = cli.get("model", {}).get("name", lower["model"].get("name", base.model))
    cli.setdefault("model", {}).update(_given_model(args, flags, model))
    return run_config_from_dict(deep_merge(_overridden(lower, cli, model), cli), where)


def _given_model(args: argparse.Namespace, flags: RunFlags, model: str) -> dict[str, Any]:
    """The model settings given as flags, each checked against ``model``'s config."""
    out: dict[str, Any] = {}
    if hasattr(args, "model.size"):
        out["size"] = getattr(args, "model.size")
        check_choice("--size", out["size"], SIZES)
    cls = MODELS[model][0]
    own = {f.name: f for f in fields(cls)}
    for model_flag in flags.models:
        flag = model_flag.flag
        if hasattr(args, flag.dest):
            key, value = flag.path[-1], getattr(args, flag.dest)
            if key not in setting_names(model):
                raise SeqrecError(not_applicable(model, key, flag.name))
            check_value(own[key], type_hints(cls).get(key, Any), value, flag.name)
            out[key] = value
    return out


def _overridden(lower: dict[str, Any], cli: dict[str, Any], model: str) -> dict[str, Any]:
    """``lower`` without what a flag replaces as a whole: the data source (--dataset or --data), and
    the settings a size preset sets (--size)."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in lower.items()}
    if {"dataset", "data"} & set(cli.get("data", {})):
        for key in ("dataset", "data"):
            out["data"].pop(key, None)
    if "size" in cli["model"]:
        for key in size_keys(model):
            out["model"].pop(key, None)
    return out


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="a TOML file of settings: tables [model] (name = ...), [train] "
                   "and [data], keys as the flags below with _ for -; flags given here override it")
    add_run_flags(p, RunConfig(data=DataConfig(data_root=data_root_default())))
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, help="artifact directory to write (default: a new runs/<model>-<time>)")
    g.add_argument("--force", action="store_true", help="overwrite an existing artifact in --out")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    g.add_argument("--k", type=ks_arg, default=(5, 10, 20), help="cut-offs for the test metrics (default: 5,10,20)")
    g.add_argument("--quiet", action="store_true", help="no progress bars and no per-epoch lines (the dataset "
                   "summary, warnings and test metrics are still printed)")
    privacy_commands.add_train_args(p)
    tracking.add_track_args(p)
    distributed.add_launch_args(p)


def print_dataset(data: Dataset) -> None:
    s = data.stats()
    print(f"dataset {data.name}: {s['users']:,} users, {s['items']:,} items, {s['events']:,} events, "
          f"mean length {s['mean_length']:.1f}, median {s['median_length']:.0f}, density {s['density']:.5f}")
    if data.report:
        for line in data.report.lines():
            print(f"  {line}")
        share = data.report.unreadable_share()
        if share > UNREADABLE_WARNING:
            print(f"seqrec: warning: {share:.0%} of the rows were dropped as missing or unparsable (see above); "
                  "check the column options (--user-col, --item-col, --time-col, --sep, --no-header)",
                  file=sys.stderr, flush=True)


def _epoch_printer(quiet: bool) -> Any:
    def show(row: dict[str, float]) -> None:
        if not quiet:
            print(f"  epoch {int(row['epoch']):3d}  loss {row['loss']:.4f}  valid NDCG@10 "
                  f"{row.get('valid_NDCG@10', float('nan')):.4f}  HR@10 {row.get('valid_HR@10', float('nan')):.4f}"
                  + (f"  epsilon {row['epsilon']:.3f}" if "epsilon" in row else "")
                  + f"  {row['seconds']:.1f}s", flush=True)
    return show


def train_run_config(args: argparse.Namespace) -> RunConfig:
    """The run that `seqrec train` ARGS asks for: defaults, then --config, then the flags given."""
    base = RunConfig(data=DataConfig(data_root=data_root_default()))
    return run_config_from_args(args, run_flags(), base, args.config)


def output_dir(args: argparse.Namespace, model: str) -> Path:
    """``--out``, or a fresh ``runs/<model>-<time>``; an existing artifact is replaced only with --force
    (or continued with --resume)."""
    out: Path = args.out or Path("runs") / f"{model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise SeqrecError(f"{out}: exists and is not a directory; choose another --out")
    if (out / "config.toml").exists() and not (args.force or args.resume):
        raise SeqrecError(f"{out}: holds an artifact already; pass --force to overwrite it, or choose another --out")
    if args.resume:
        epoch = checkpoint_epoch(out / "checkpoint")
        print(f"resuming from the checkpoint in {out} after epoch {epoch}" if epoch is not None
              else f"--resume: no checkpoint in {out}; training from the start", flush=True)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    """`seqrec train`: in this process; as torchrun's processes (--nproc, --nnodes); or as one of them."""
    run = train_run_config(args)
    launch = distributed.launch_from(args)
    if launch.needed and not distributed.launched(os.environ):
        outcome = distributed.launch_train(launch, getattr(args, "argv", None), os.environ, run.train)
        if outcome.message:
            print(f"seqrec: error: {outcome.message}", file=sys.stderr)
        return outcome.status
    with distributed.worker(os.environ, run.train.device, args.dist_timeout) as ranks:
        if not ranks.main:
            args.track = []  # rank 0 logs for all
        return _train(args, run, ranks)


def _train(args: argparse.Namespace, run: RunConfig, ranks: distributed.Ranks) -> int:
    out = output_dir(args, run.model)
    trackers = tracking.train_trackers(args, run_config_dict(run), out)
    ingest = privacy_commands.ingest_from(args, os.environ.get(ENV_PSEUDONYM_KEY))
    data, dropped = privacy_commands.load_training_data(run.data, ingest)
    tower, users = prepare_inputs(run.data.items, data.items, data.users)
    print_dataset(data)
    split = split_data(run.data, data)
    results: dict[str, dict[str, float]] = {}
    baseline: Recommender | None = None
    if run.model != "popular" and ranks.main:
        # the baseline is a comparison printed here, not part of the artifact: never private
        baseline = Recommender("popular", replace(run.train, privacy=PrivacyConfig()),
                               max_len=run.model_config["max_len"])
        baseline.fit(data, split, progress=False)
        results["popular"] = {}  # ranked after training, so that a large log's training starts without waiting
    rec = Recommender(run.model, run.train, **run.model_config)
    rec.tower_inputs = tower
    rec.user_inputs = users
    if run.data.transfer.init_from is not None:
        rec.prepare_model = transfer_hook(run.model, run.data.transfer.init_from, run.data.transfer.freeze)
    rec.data_config = to_dict(run.data)
    print(f"training {run.model} ...", flush=True)
    result = rec.fit(data, split, out_dir=out, resume=args.resume, progress=not args.quiet,
                     on_epoch=trackers.hook(_epoch_printer(args.quiet)))
    if not ranks.main:
        return 0  # rank 0 evaluates and writes the artifact
    print(f"{run.model}: {rec.info['n_parameters']:,} parameters, best epoch {rec.info['best_epoch']}")
    if result.stopped_by_time:
        print(f"seqrec: note: training stopped after {len(result.history)} epochs: max_seconds "
              f"({run.train.max_seconds:g} s) was reached", file=sys.stderr)
    if baseline is not None:
        results["popular"] = baseline.evaluate(ks=args.k)
    results[run.model] = rec.evaluate(ks=args.k)
    rec.info["test_metrics"] = results[run.model]
    rec.info["baseline_test_metrics"] = results.get("popular")
    if ingest.active:
        histories = ingest.key is None or args.keep_histories
        privacy_commands.record(rec.info, ingest, dropped, histories)
        if not histories:
            assert rec.dataset is not None
            rec.dataset = privacy_commands.no_histories(rec.dataset)
    names = [f"{m}@{k}" for k in args.k for m in ("HR", "NDCG", "MRR")]
    print(f"\ntest metrics (full ranking over {data.n_items:,} items, seen items excluded):")
    print(metrics_table(results, names))
    rec.save(out)
    trackers.finish(results[run.model], out, prefix="test_")
    print(f"\nartifact written to {out}")
    return 0


def _metric_order(name: str) -> tuple[str, int]:
    """HR@5 before HR@10 before HR@20: by metric, then by K as a number."""
    metric, _, k = name.partition("@")
    return metric, int(k) if k.isdigit() else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    rec = Recommender.load(args.artifact)
    if args.data is not None:
        return _print_metrics(rec, args, _evaluate_other(rec, args), f"zero-shot on {args.data.name}")
    metrics = rec.evaluate(on=args.on, ks=args.k, exclude_seen=not args.include_seen,
                           sampled=args.sampled, n_negatives=args.negatives)
    return _print_metrics(rec, args, metrics)


def _evaluate_other(rec: Recommender, args: argparse.Namespace) -> dict[str, float]:
    """``evaluate ARTIFACT --data OTHER --item-text OTHER_TEXT``: the model on another catalog, no training."""
    from seqrec.data.io import ReadOptions
    from seqrec.items.zero_shot import evaluate_other, other_catalog_inputs, read_other_log, require_inductive

    if args.sampled:
        raise SeqrecError("--data (zero-shot) evaluates by full ranking; drop --sampled")
    assert rec.model is not None and rec.dataset is not None
    require_inductive(rec.model)  # an id-only model refuses before the other files are read
    read = ReadOptions(format=args.data_format, sep=args.sep, header=not args.no_header, user_col=args.user_col,
                       item_col=args.item_col, time_col=args.time_col)
    other = read_other_log(str(args.data), read)
    inputs = other_catalog_inputs(rec.model, other.items, args.item_text, args.item_features, args.text_cols,
                                  args.item_id_col, rec.data_config)
    return evaluate_other(rec.model, rec.dataset.items, other, inputs, args.k, not args.include_seen, args.on)


def _print_metrics(rec: Recommender, args: argparse.Namespace, metrics: dict[str, float], where: str = "") -> int:
    ordered = dict(sorted(metrics.items(), key=lambda kv: _metric_order(kv[0])))
    fmt = "json" if args.json else args.format
    if fmt == "json":
        print(json.dumps(ordered, indent=2))
    elif fmt == "csv":
        print(pd.DataFrame({"metric": list(ordered), "value": list(ordered.values())}).to_csv(index=False), end="")
    else:
        label = f"SAMPLED ({args.negatives} {args.sampled} negatives)" if args.sampled else "full ranking"
        print(f"{rec.model_name} on {args.on} ({label}{', ' + where if where else ''}):")
        print(table(["metric", "value"], list(ordered.items())))
    return 0


def _read_user_ids(path: Path) -> list[str]:
    """User ids, one per line (blank lines skipped)."""
    try:
        ids = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError as exc:
        raise SeqrecError(f"{path}: cannot read the user list ({exc.strerror})") from None
    ids = [i for i in ids if i]
    if not ids:
        raise SeqrecError(f"{path}: no user ids in it; write one id per line")
    return ids


def _recommend_many(rec: Recommender, path: Path, k: int, exclude_seen: bool, key: bytes | None = None
                    ) -> pd.DataFrame:
    users = _read_user_ids(path)
    assert rec.dataset is not None
    asked = users
    if key is not None:  # a pseudonymised artifact: look the ids up by pseudonym, answer with the ids asked for
        users = [pseudonym(key, u) for u in asked]
    known = rec.dataset.users.to_internal(users, strict=False) >= 0
    unknown = [u for u, ok in zip(asked, known, strict=True) if not ok]
    if unknown:
        print(f"seqrec: note: {len(unknown):,} of {len(users):,} users are unknown to the model and were skipped "
              f"(first: {unknown[0]!r})", file=sys.stderr)
    if not known.any():
        raise SeqrecError(f"{path}: none of its users are known to the model; check the ids")
    frame = rec.recommend([u for u, ok in zip(users, known, strict=True) if ok], k=k, exclude_seen=exclude_seen)
    if key is not None:
        frame["user_id"] = frame["user_id"].map(dict(zip(users, asked, strict=True)))
    return frame


def _recommend_history(rec: Recommender, text: str, k: int, exclude_seen: bool) -> pd.DataFrame:
    history = [h.strip() for h in text.split(",") if h.strip()]
    if not history:
        raise SeqrecError("--history is empty; give item ids separated by commas, oldest first")
    assert rec.dataset is not None
    unknown = [h for h, i in zip(history, rec.dataset.items.to_internal(history, strict=False), strict=True) if i < 0]
    if len(unknown) == len(history):
        raise SeqrecError("none of the history items are known to the model; check the item ids")
    if unknown:
        print(f"seqrec: note: {len(unknown)} of {len(history)} history items are unknown to the model and were "
              f"skipped: {', '.join(unknown[:10])}", file=sys.stderr)
    return rec.recommend_history(history, k=k, exclude_seen=exclude_seen)


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """Write recommendations by the file's extension: .parquet, .csv or .json (records)."""
    suffix = path.suffix.lower()
    writers: dict[str, Callable[[Path], object]] = {
        ".parquet": lambda tmp: frame.to_parquet(tmp, index=False),
        ".csv": lambda tmp: frame.to_csv(tmp, index=False),
        ".json": lambda tmp: frame.to_json(tmp, orient="records", indent=2)}
    if suffix not in writers:
        raise SeqrecError(f"--out {path}: write .parquet, .csv or .json")
    replace_file(path, writers[suffix], f"--out {path}")


def cmd_recommend(args: argparse.Namespace) -> int:
    rec = Recommender.load(args.artifact)
    exclude_seen = not args.include_seen
    key = None
    if args.users is not None or args.user is not None:  # ids to look up: raw, or through the artifact's key
        key = privacy_commands.key_from(args, os.environ.get(ENV_PSEUDONYM_KEY))
        verify_key(rec.info, key, str(args.artifact))
    if args.users is not None:
        frame = _recommend_many(rec, args.users, args.k, exclude_seen, key)
    elif args.user is not None:
        frame = rec.recommend([args.user if key is None else pseudonym(key, args.user)], k=args.k,
                              exclude_seen=exclude_seen)
        frame["user_id"] = args.user  # the id asked for, never its pseudonym
    elif args.history is not None and args.new_items is not None:
        from seqrec.items.new_items import recommend_new

        model, dataset = rec._ready()
        frame = recommend_new(model, dataset.items, [h.strip() for h in args.history.split(",") if h.strip()],
                              args.new_items, args.k, exclude_seen, data_config=rec.data_config)
    elif args.history is not None:
        frame = _recommend_history(rec, args.history, args.k, exclude_seen)
    else:
        raise SeqrecError("give --user ID, --users FILE or --history ITEM,ITEM,...")
    if args.out is not None:
        write_frame(frame, args.out)
        print(f"{len(frame):,} recommendations written to {args.out}")
        return 0
    if args.format == "json":
        print(frame.to_json(orient="records", indent=2))
    elif args.format == "csv":
        print(frame.to_csv(index=False), end="")
    else:
        cols = [c for c in ("user_id", "rank", "item_id", "score", "title") if c in frame and
                (c != "user_id" or args.users is not None)]
        print(table(cols, list(frame[cols].itertuples(index=False))))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    """`seqrec train --config ARTIFACT/config.toml` with the given exclusions and key, written over
    ARTIFACT (or to --out): the artifact's own run settings and seed, without those users."""
    config = args.artifact / "config.toml"
    if not config.is_file():
        raise SeqrecError(f"{args.artifact}: no artifact here (no config.toml); give an artifact directory")
    argv = ["train", "--config", str(config), "--out", str(args.out or args.artifact), "--force"]
    for flag, value in (("--exclude-users", args.exclude_users), ("--pseudonymise-users", args.pseudonymise_users)):
        argv += [flag, str(value)] if value is not None else []
    argv += ["--quiet"] * args.quiet + ["--keep-histories"] * args.keep_histories
    return cmd_train(parse(build_parser(), argv))


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


def cmd_runs(args: argparse.Namespace) -> int:
    from seqrec.runs import format_runs, list_runs

    runs = list_runs(args.dir)
    print(format_runs(runs, args.format) if runs or args.format != "table" else f"no runs under {args.dir}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from seqrec.runs import compare_text, plot_compare, read_runs

    runs = read_runs(args.runs)
    print(compare_text(runs))
    if args.plot is not None:
        print(f"\nlearning curves written to {plot_compare(runs, args.plot)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from seqrec.demo import run_demo

    return run_demo(args.out, args.epochs, args.model, quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="seqrec", description="Sequential recommendation: train, evaluate "
                                     "by full ranking, recommend and serve next-item models.")
    parser.add_argument("--version", action="version", version=f"seqrec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("demo", help="train on the bundled MovieLens data and show recommendations")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where to save the demo artifact")
    p.add_argument("--epochs", type=int, default=DEMO_CONFIG.epochs,
                   help=f"training epochs at most (default: {DEMO_CONFIG.epochs}; early stopping may end sooner)")
    p.add_argument("--model", choices=model_names(), default="gru4rec", help="the model to train (default: gru4rec)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("train", help="train a model and write an artifact", allow_abbrev=False,
                       description="Train a model on a log and write an artifact. Settings come from the "
                       "defaults shown, then --config FILE, then the flags given.")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="evaluate an artifact by full ranking (or, on request, sampled)")
    p.add_argument("artifact", type=Path, help="an artifact directory written by `seqrec train --out`")
    p.add_argument("--on", choices=("test", "valid"), default="test",
                   help="the held-out events to rank: each user's test or validation target (default: test)")
    p.add_argument("--k", type=ks_arg, default=EvalConfig().ks, help=_eval_help("ks"))
    p.add_argument("--include-seen", action="store_true", help="do not exclude already-seen items")
    p.add_argument("--sampled", choices=("uniform", "popularity"),
                   help="rank against sampled negatives instead of the catalog (labelled 'sampled')")
    p.add_argument("--negatives", type=int, default=EvalConfig().n_negatives, help=_eval_help("n_negatives"))
    p.add_argument("--format", choices=FORMATS_OUT, default="table", help="output format (default: table)")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    z = p.add_argument_group("zero-shot: another log and catalog, no training on it (text/feature models)")
    z.add_argument("--data", type=Path, help="another interaction log; its leave-one-out split is evaluated, its "
                   "items embedded from --item-text/--item-features through the model")
    z.add_argument("--item-text", help="the other catalog's item text file (for a text model)")
    z.add_argument("--item-features", help="the other catalog's item attribute file (for a features model)")
    z.add_argument("--text-cols", help="text columns of --item-text (default: the artifact's)")
    z.add_argument("--item-id-col", help="id column of the item files (default: the first)")
    z.add_argument("--data-format", default="auto", help="format of --data (as train's --format; default: auto)")
    z.add_argument("--sep", help="column separator of --data (default: sniffed)")
    z.add_argument("--no-header", action="store_true", help="--data has no header line")
    z.add_argument("--user-col", default="user_id", help="user column of --data (default: user_id)")
    z.add_argument("--item-col", default="item_id", help="item column of --data (default: item_id)")
    z.add_argument("--time-col", default="", help="time column of --data (default: 'timestamp' when present)")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("recommend", help="top-k for a known user or an ad-hoc history")
    p.add_argument("artifact", type=Path, help="an artifact directory written by `seqrec train --out`")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--user", help="a user id from the training data")
    who.add_argument("--history", help="comma-separated item ids, oldest first")
    who.add_argument("--users", type=Path, help="a file of user ids, one per line: recommend for all of them")
    p.add_argument("--new-items", type=Path, help="with --history: items added after training (their feature "
                   "and text columns), scored beside the catalog; needs an artifact with features or text")
    p.add_argument("--out", type=Path, help="write the recommendations to a .parquet, .csv or .json file")
    p.add_argument("--format", choices=FORMATS_OUT, default="table", help="output format (default: table)")
    p.add_argument("--k", type=int, default=10, help="how many items to recommend (default: 10)")
    p.add_argument("--include-seen", action="store_true", help="also recommend items already in the history")
    privacy_commands.add_key_arg(p, "the artifact's pseudonymisation key: --user is a raw id, mapped with it")
    p.set_defaults(func=cmd_recommend)
    privacy_commands.add_forget_parser(sub).set_defaults(
        func=lambda a: privacy_commands.cmd_forget(a, os.environ.get(ENV_PSEUDONYM_KEY)))
    p = sub.add_parser("retrain", help="train an artifact's run again, without some users (exact unlearning)")
    p.add_argument("artifact", type=Path, help="an artifact directory written by `seqrec train --out`")
    p.add_argument("--out", type=Path, help="where to write the new artifact (default: replace ARTIFACT)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no per-epoch lines")
    privacy_commands.add_train_args(p)
    p.set_defaults(func=cmd_retrain)
    p = sub.add_parser("datasets", help="list bundled and known datasets")
    p.add_argument("--data-root", type=Path, default=Path(data_root_default()),
                   help=f"folder holding the known datasets (default: ${ENV_DATA_ROOT} or {DataConfig().data_root})")
    p.set_defaults(func=cmd_datasets)
    p = sub.add_parser("plot", help="draw a run's learning curves (loss, validation metrics) to a PNG")
    p.add_argument("run", type=Path, help="an artifact directory written by `seqrec train --out`")
    p.add_argument("--output", type=Path, help="PNG path (default: RUN/curves.png)")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("runs", help="list the artifacts under a folder, best test NDCG@10 first")
    p.add_argument("dir", type=Path, nargs="?", default=Path("runs"),
                   help="folder searched recursively for artifacts (default: runs)")
    p.add_argument("--format", choices=FORMATS_OUT, default="table", help="output format (default: table)")
    p.set_defaults(func=cmd_runs)
    p = sub.add_parser("compare", help="show runs side by side: the settings that differ, then the metrics")
    p.add_argument("runs", type=Path, nargs="+", help="two or more artifact directories written by `seqrec train`")
    p.add_argument("--plot", type=Path, default=None,
                   help="also draw their validation NDCG@10 curves to this PNG (needs seqrec[plot]; default: none)")
    p.set_defaults(func=cmd_compare)
    add_serve_parser(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))
    add_export_parser(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))
    add_blend_parser(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))
    add_tune_parser(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))
    add_prepare_parser(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))
    add_update_parser(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; an unknown option is a one-line error naming the nearest known one."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = getattr(args, "command", None)
        options = _option_strings(parser, command)
        word = extra[0]
        see = f"see `seqrec {command} --help`" if command else "see `seqrec --help`"
        if word.startswith("-"):
            raise SeqrecError(f"unknown option {word}{nearest(word.split('=')[0], options)}; {see}")
        raise SeqrecError(f"unexpected argument {word!r}; {see}")
    return args


def _option_strings(parser: argparse.ArgumentParser, command: str | None) -> list[str]:
    """The options of ``command``'s subparser (argparse keeps them in private attributes)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return list(action.choices[command]._option_string_actions)
    return list(parser._option_string_actions)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(build_parser(), argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc N` relaunches it
        return int(args.func(args))
    except SeqrecError as exc:
        print(f"seqrec: error: {exc}", file=sys.stderr)
        return 2
    except distributed.LostRanks as exc:
        if str(exc):
            print(f"seqrec: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("seqrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
