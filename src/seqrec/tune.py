"""`seqrec tune`: hyperparameter search with Optuna on the validation split, never the test split.

Every `seqrec train` flag (and ``--config``) sets the fixed part of the run; the searched part comes
from the model's default space or a ``--space`` TOML file (:mod:`seqrec.tune_space`). Each trial
trains on the training split and is scored by its best validation metric (``--valid-metric``,
NDCG@10 by default), reported after every epoch to a pruner that stops unpromising trials early.
The study lives in SQLite (``OUT/study.db`` by default), so a run killed at any point goes on from
where it was when started again with the same ``--study-name`` (a trial cut short by the kill is
marked failed and tried again once). After every trial ``OUT/trials.csv``, ``OUT/trials.json`` and
``OUT/best.toml`` are rewritten; ``seqrec train --config OUT/best.toml`` trains the best run and only
then evaluates it on the test split. With ``--save-best`` the best trial's model itself is kept as an
artifact (``OUT/best-model``, replaced whenever a later trial is better), so that
``seqrec evaluate OUT/best-model`` gives its test metrics without training it again.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import tomllib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from seqrec import tracking
from seqrec.atomic import replace_text
from seqrec.data.config import DataConfig, load_data, split_data
from seqrec.data.preprocess import Dataset
from seqrec.data.split import Split
from seqrec.errors import SeqrecError
from seqrec.items.features import TowerInputs, prepare_inputs
from seqrec.items.users import UserInputs
from seqrec.models.registry import MODELS
from seqrec.recommender import Recommender
from seqrec.report import table
from seqrec.runconfig import RunConfig, run_config_dict, size_keys
from seqrec.settings import dump_toml, given, load_toml, to_dict, with_added
from seqrec.tune_space import Param, apply, build_space, check_space

INSTALL = "pip install 'seqrec[tune]'"
PRUNERS = ("median", "none")
HEARTBEAT_SECONDS, GRACE_SECONDS = 20, 60  # a trial silent this long (its process killed) is failed
FILES = ("best.toml", "trials.csv", "trials.json")
BEST_MODEL = "best-model"  # with --save-best: the best trial's artifact
LABELS = {"fixed": "fixed run", "space": "search space", "metric": "validation metric"}


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise SeqrecError(f"`seqrec tune` needs optuna: {INSTALL}") from None
    return optuna


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the `tune` subcommand."""
    from seqrec.cli import add_run_flags, data_root_default

    p = sub.add_parser("tune", help="search hyperparameters on the validation split (Optuna)", allow_abbrev=False,
                       description="Search a model's settings with Optuna's TPE sampler and a median pruner, "
                       "scored by the best validation metric of each trial (the test split is never evaluated). "
                       "The flags of `seqrec train` fix the rest of the run. Needs pip install 'seqrec[tune]'.")
    p.add_argument("--config", type=Path, help="a TOML file of fixed settings, as for `seqrec train --config`")
    add_run_flags(p, RunConfig(data=DataConfig(data_root=data_root_default())))
    g = p.add_argument_group("search")
    g.add_argument("--space", type=Path, help="a TOML file of searched settings: tables such as [train.lr] with "
                   "low, high, log, step, or choices = [...]; overrides the model's default space "
                   "(defaults = false: only the file's); see docs/tuning.md")
    g.add_argument("--trials", type=_positive_int, default=20, help="trials to run in this call (default: 20)")
    g.add_argument("--timeout", type=_positive_float, help="start no trial after this many seconds (the running "
                   "one finishes; default: no limit)")
    g.add_argument("--study-name", help="the study to create or continue (default: <dataset>-<model>)")
    g.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    g.add_argument("--out", type=Path, help="folder for study.db, best.toml, trials.csv and trials.json "
                   "(default: tune/<study name>)")
    g.add_argument("--pruner", choices=PRUNERS, default="median", help="stop a trial whose validation metric is "
                   "below the median of earlier trials at the same epoch (default: median)")
    g.add_argument("--prune-after", type=int, default=2, metavar="EPOCHS",
                   help="epochs every trial runs before it may be pruned (default: 2)")
    g.add_argument("--enqueue", action="append", default=[], metavar="RUN.toml|PATH=VALUE,...",
                   help="try these settings first (repeatable): a run file (best.toml, an artifact's config.toml) "
                   "or dotted settings such as model.dim=256,train.lr=0.001; only the searched ones are read")
    g.add_argument("--save-best", action="store_true",
                   help=f"keep the best trial's model as an artifact in OUT/{BEST_MODEL} (replaced whenever a later "
                   f"trial is better; it holds the training histories); seqrec evaluate OUT/{BEST_MODEL} then tests "
                   "it without training it again (default: off)")
    g.add_argument("--quiet", action="store_true", help="one line per trial instead of one per epoch")
    tracking.add_track_args(p)
    p.set_defaults(func=cmd_tune)


# ---- the fixed run and its data -----------------------------------------------------------------


def fixed_run(args: argparse.Namespace) -> tuple[RunConfig, set[str]]:
    """The run the flags and --config describe, and the dotted paths they set (fixed, not searched)."""
    from seqrec.cli import data_root_default, run_config_from_args, run_flags

    flags = run_flags()
    run = run_config_from_args(args, flags, RunConfig(data=DataConfig(data_root=data_root_default())), args.config)
    paths = set(tracking.flatten(load_toml(args.config))) if args.config is not None else set()
    paths |= set(tracking.flatten(given(args, [flags.model, *flags.config])))
    paths |= {f"model.{m.flag.path[-1]}" for m in flags.models if hasattr(args, m.flag.dest)}
    if hasattr(args, "model.size") or "model.size" in paths:
        paths |= {f"model.{k}" for k in size_keys(run.model)}
    return run, paths


@dataclass
class TrialData:
    """What every trial trains on, read once."""

    data: Dataset
    split: Split
    tower: TowerInputs | None  # item features or text
    users: UserInputs | None  # user features


def read_data(run: RunConfig) -> TrialData:
    from seqrec.cli import print_dataset

    data = load_data(run.data)
    tower, users = prepare_inputs(run.data.items, data.items, data.users)
    print_dataset(data)
    return TrialData(data, split_data(run.data, data), tower, users)


# ---- one trial ----------------------------------------------------------------------------------


def suggest(trial: Any, p: Param) -> Any:
    if p.kind == "choice":
        return trial.suggest_categorical(p.path, list(p.choices))
    if p.kind == "int":
        return trial.suggest_int(p.path, int(p.low or 0), int(p.high or 0), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(p.path, float(p.low or 0.0), float(p.high or 0.0), step=p.step, log=p.log)


def short(values: dict[str, Any]) -> str:
    return "  ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                     for k, v in values.items())


@dataclass
class Objective:
    """Train one sampled run and return its best validation metric (never touching the test split)."""

    fixed: RunConfig
    params: Sequence[Param]
    trial_data: TrialData
    args: argparse.Namespace
    study_name: str
    out: Path

    @property
    def metric(self) -> str:
        return f"valid_{self.fixed.train.valid_metric}"

    def recommender(self, run: RunConfig) -> Recommender:
        from seqrec.items.transfer import transfer_hook

        rec = Recommender(run.model, run.train, **run.model_config)
        rec.tower_inputs = self.trial_data.tower
        rec.user_inputs = self.trial_data.users
        if run.data.transfer.init_from is not None:
            rec.prepare_model = transfer_hook(run.model, run.data.transfer.init_from, run.data.transfer.freeze)
        return rec

    def __call__(self, trial: Any) -> float:
        from seqrec.cli import _epoch_printer

        optuna = _import_optuna()
        values = {p.path: suggest(trial, p) for p in self.params}
        print(f"trial {trial.number}: {short(values)}", flush=True)
        try:
            run = apply(self.fixed, values)
        except SeqrecError as exc:  # a combination the model rejects: this trial fails, the study goes on
            print(f"trial {trial.number}: failed: {exc}", flush=True)
            raise
        rec = self.recommender(run)
        trackers = self._trackers(trial.number, run)
        printer = trackers.hook(None if self.args.quiet else _epoch_printer(False))

        def on_epoch(row: dict[str, float]) -> None:
            printer(row)
            epoch = int(row["epoch"])
            trial.report(row[self.metric], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}: {self.metric} {row[self.metric]:.4f}")

        try:
            result = rec.fit(self.trial_data.data, self.trial_data.split, progress=False, on_epoch=on_epoch)
        except optuna.TrialPruned as exc:
            print(f"trial {trial.number}: {exc}", flush=True)
            trackers.finish({}, status="pruned")
            raise
        except BaseException as exc:
            trackers.finish({}, status="failed")
            if isinstance(exc, SeqrecError | torch.OutOfMemoryError):  # caught by the study, which goes on
                print(f"trial {trial.number}: failed: {exc}", flush=True)
            raise
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("epochs", len(result.history))
        trial.set_user_attr("train_seconds", result.seconds)
        trial.set_user_attr("n_parameters", rec.info.get("n_parameters"))
        trackers.finish({f"best_{self.metric}": result.best_metric})
        print(f"trial {trial.number}: {self.metric} {result.best_metric:.4f} at epoch {result.best_epoch} "
              f"({len(result.history)} epochs, {result.seconds:.0f} s)", flush=True)
        if self.args.save_best:
            self._save_if_best(trial, rec, run, values, result.best_metric)
        return result.best_metric

    def _save_if_best(self, trial: Any, rec: Recommender, run: RunConfig, values: dict[str, Any],
                      value: float) -> None:
        """Keep this trial's model when it beats every completed trial of the study and the model kept
        already (ties keep the earlier one). Meant for one worker per study: two processes sharing a
        study may each judge their trial the best at the same moment."""
        best = best_trial(trial.study)
        kept = kept_trial(trial.study, self.out)
        if (best is not None and value <= best.value) or (kept is not None and value <= kept.value):
            return
        rec.data_config = to_dict(run.data)  # as `seqrec train` records it
        rec.info["tune"] = {"study": self.study_name, "trial": trial.number, "params": values, "value": value,
                            "metric": self.metric}
        try:
            path = rec.save(self.out / BEST_MODEL)
        except (OSError, SeqrecError) as exc:  # the trial itself completed: the study goes on without its model
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"trial {trial.number}: note: its model could not be saved in {self.out / BEST_MODEL} ({why})",
                  flush=True)
            return
        print(f"trial {trial.number}: the best so far; its model is saved in {path}", flush=True)

    def _trackers(self, number: int, run: RunConfig) -> tracking.Trackers:
        names = tracking.requested(self.args)
        if not names:
            return tracking.Trackers()
        root = self.args.track_dir or self.out / "tensorboard"
        trackers = tracking.open_trackers(
            names, run_name=f"{self.study_name}-trial-{number}", experiment=self.args.track_experiment or
            self.study_name, mlflow_uri=self.args.track_uri, tensorboard_dir=root / f"trial-{number}",
            tags={"seqrec.command": "tune", "seqrec.study": self.study_name, "seqrec.trial": str(number)})
        trackers.log_params(tracking.flatten(run_config_dict(run)))
        return trackers


# ---- the study ----------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def open_study(args: argparse.Namespace, name: str, storage_url: str, fixed: RunConfig,
               params: Sequence[Param]) -> Any:
    """Create the study, or load it when it exists and was made with the same fixed run and space."""
    optuna = _import_optuna()
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat's
            storage = RDBStorage(storage_url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    except Exception as exc:  # a bad URL or an unreadable file: the user's to fix
        raise SeqrecError(f"--storage {storage_url}: cannot open it ({str(exc).splitlines()[0]})") from None
    settings = {"fixed": _jsonable(run_config_dict(fixed)), "space": [p.to_json() for p in params],
                "metric": fixed.train.valid_metric}
    existing = {s.study_name for s in storage.get_all_studies()}
    done = len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)) if name in existing else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate TPE
        # seeded, and offset by the trials already run: a continued study draws new points, not the first ones again
        sampler = optuna.samplers.TPESampler(seed=fixed.train.seed + done, n_startup_trials=5, multivariate=True)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=args.prune_after)
              if args.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=make_pruner(pruner),
                                direction="maximize", load_if_exists=True)
    if name not in existing:
        for key, value in settings.items():
            study.set_user_attr(f"seqrec.{key}", value)
        return study
    for key, value in settings.items():
        recorded = study.user_attrs.get(f"seqrec.{key}")
        if key == "fixed":
            recorded = with_added_defaults(recorded)
        if recorded != value:
            raise SeqrecError(f"study {name!r} in {storage_url} was made with another {LABELS[key]} (" + differing(
                recorded, value) + "); give the same settings to continue it, or another --study-name")
    print(f"continuing study {name!r}: {done} trials so far", flush=True)
    return study


def with_added_defaults(fixed: Any) -> Any:
    """A recorded fixed run with the model settings added since it was recorded (``setting(added=True)``)
    at their defaults, which is what the run had then."""
    model = fixed.get("model") if isinstance(fixed, dict) else None
    if not isinstance(model, dict) or model.get("name") not in MODELS:
        return fixed
    return {**fixed, "model": _jsonable(with_added(MODELS[model["name"]][0], model))}


def enqueued(text: str, params: Sequence[Param]) -> dict[str, Any]:
    """The searched settings of ``--enqueue TEXT`` (a run TOML file, or PATH=VALUE pairs), each checked
    against its range or choices."""
    path = Path(text)
    if path.suffix == ".toml" or path.is_file():
        given_values = tracking.flatten(load_toml(path))
    else:
        given_values = {}
        for pair in text.split(","):
            key, sep, value = pair.partition("=")
            if not sep:
                raise SeqrecError(f"--enqueue {text}: give a run .toml file or PATH=VALUE pairs such as model.dim=256")
            try:
                given_values[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
            except tomllib.TOMLDecodeError:
                given_values[key.strip()] = value.strip()  # a bare word: a string
    values = {p.path: given_values[p.path] for p in params if p.path in given_values}
    if not values:
        raise SeqrecError(f"--enqueue {text}: sets none of the searched settings ({', '.join(p.path for p in params)})")
    for p in params:
        if p.path in values and not p.contains(values[p.path]):
            raise SeqrecError(f"--enqueue {text}: {p.path} = {values[p.path]!r} is outside the search space "
                              f"({p.describe()})")
    return values


def make_pruner(pruner: Any) -> Any:
    """The pruner a study uses (a seam: tests swap in one that always prunes)."""
    return pruner


def differing(old: Any, new: Any) -> str:
    """The first setting where ``old`` and ``new`` differ, as ``path: old -> new``."""
    old_flat = tracking.flatten(old) if isinstance(old, dict) else {"": old}
    new_flat = tracking.flatten(new) if isinstance(new, dict) else {"": new}
    for key in sorted(old_flat.keys() | new_flat.keys()):
        if old_flat.get(key) != new_flat.get(key):
            return f"{key + ': ' if key else ''}{old_flat.get(key)!r} -> {new_flat.get(key)!r}"
    return "same values"


def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                     "best_epoch": t.user_attrs.get("best_epoch"),
                     "epochs": t.user_attrs.get("epochs", steps[-1] if steps else None),
                     "train_seconds": t.user_attrs.get("train_seconds"),
                     "n_parameters": t.user_attrs.get("n_parameters"),
                     "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
                     **t.params})
    return rows


def best_trial(study: Any) -> Any | None:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def write_results(study: Any, out: Path, fixed: RunConfig, storage_url: str) -> None:
    """trials.csv, trials.json and (once a trial has completed) best.toml."""
    rows = trial_rows(study)
    replace_text(out / "trials.csv", pd.DataFrame(rows).to_csv(index=False))
    best = best_trial(study)
    summary = {"study": study.study_name, "storage": storage_url, "metric": f"valid_{fixed.train.valid_metric}",
               "direction": "maximize", "fixed": _jsonable(run_config_dict(fixed)),
               "space": study.user_attrs.get("seqrec.space"),
               "best": None if best is None else {"trial": best.number, "value": best.value, "params": best.params,
                                                   "best_epoch": best.user_attrs.get("best_epoch")},
               "trials": rows}
    replace_text(out / "trials.json", json.dumps(summary, indent=2, default=str))
    if best is not None:
        run = apply(fixed, best.params, f"trial {best.number}")
        header = (f"# the best run of study {study.study_name!r}: trial {best.number}, valid "
                  f"{fixed.train.valid_metric} {best.value:.4f}\n"
                  f"# train it: seqrec train --config {out / 'best.toml'}\n")
        replace_text(out / "best.toml", header + dump_toml(run_config_dict(run)))


def print_summary(study: Any, out: Path, metric: str) -> None:
    rows = trial_rows(study)
    states = pd.Series([r["state"] for r in rows]).value_counts().to_dict() if rows else {}
    print(f"\nstudy {study.study_name!r}: {len(rows)} trials (" +
          ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")")
    best = best_trial(study)
    if best is None:
        print("no trial has completed yet, so there is no best.toml")
        return
    done = sorted((r for r in rows if r["state"] == "complete"), key=lambda r: -r["value"])[:5]
    names = [k for k in best.params]
    print(table(["trial", metric, "epoch", *[n.rsplit(".", 1)[-1] for n in names]],
                [[r["trial"], f"{r['value']:.4f}", r["best_epoch"],
                  *[f"{r.get(n):.3g}" if isinstance(r.get(n), float) else r.get(n) for n in names]] for r in done]))
    print(f"\nbest: trial {best.number}, {metric} {best.value:.4f}: {short(best.params)}")
    print(f"written: {', '.join(str(out / f) for f in FILES)}")
    kept = kept_trial(study, out)
    if kept is not None and kept.number == best.number:
        print(f"its model: {out / BEST_MODEL}; evaluate it on the test split: seqrec evaluate {out / BEST_MODEL}")
        return
    if kept is not None:
        print(f"note: {out / BEST_MODEL} holds trial {kept.number}, not the best trial {best.number}")
    elif kept_model(out, study.study_name) is not None:
        print(f"note: {out / BEST_MODEL} holds a model this study does not record as a completed trial")
    print(f"train it and evaluate on the test split: seqrec train --config {out / 'best.toml'}")


def _kept_info(out: Path) -> dict[str, Any] | None:
    """The ``tune`` record of the model ``OUT/best-model`` keeps, if it keeps one."""
    try:
        info = json.loads((out / BEST_MODEL / "info.json").read_text())
    except (OSError, ValueError):
        return None
    tune = info.get("tune") if isinstance(info, dict) else None
    return tune if isinstance(tune, dict) and isinstance(tune.get("study"), str) else None


def kept_study(out: Path) -> str | None:
    """The study whose model ``OUT/best-model`` keeps, if it keeps one."""
    tune = _kept_info(out)
    return None if tune is None else str(tune["study"])


def kept_model(out: Path, study_name: str) -> tuple[int, float] | None:
    """(trial, validation value) of the model ``OUT/best-model`` keeps for study ``study_name``, if any.

    What the model's info says; :func:`kept_trial` checks it against the study itself."""
    tune = _kept_info(out)
    if tune is None or tune["study"] != study_name:
        return None
    trial, value = tune.get("trial"), tune.get("value")
    if type(trial) is not int or not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return trial, float(value)


def kept_trial(study: Any, out: Path) -> Any | None:
    """The completed trial of ``study`` whose model ``OUT/best-model`` keeps, or None.

    The model counts only when the study records its trial as complete with the same value: a model
    saved by a study since deleted (a new study of the same name numbers its trials afresh), or by a
    trial cut off before Optuna recorded it, is not this study's and may be replaced."""
    kept = kept_model(out, study.study_name)
    if kept is None:
        return None
    for t in study.get_trials(deepcopy=False):
        if t.number == kept[0]:
            return t if t.state.name == "COMPLETE" and t.value == kept[1] else None
    return None


def check_kept_study(out: Path, name: str) -> None:
    """``--save-best`` never replaces the model another study keeps in the same folder."""
    other = kept_study(out)
    if other is not None and other != name:
        raise SeqrecError(f"--save-best: {out / BEST_MODEL} keeps the model of study {other!r}, not {name!r}; "
                          "give another --out (or move that model away)")


def cmd_tune(args: argparse.Namespace) -> int:
    _import_optuna()
    names = tracking.requested(args)
    tracking.check_installed(names)
    if args.prune_after < 0:
        raise SeqrecError(f"--prune-after {args.prune_after}: must be 0 or more epochs")
    fixed, paths = fixed_run(args)
    params = build_space(fixed.model, paths, args.space)
    check_space(fixed, params)
    queued = [enqueued(text, params) for text in args.enqueue]
    name = args.study_name or f"{fixed.data.name}-{fixed.model}"
    out: Path = args.out or Path("tune") / name
    if args.save_best:
        check_kept_study(out, name)
    trial_data = read_data(fixed)  # before the study folder exists: unreadable data leaves nothing behind
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SeqrecError(f"--out {out}: cannot create it ({exc.strerror})") from None
    storage_url = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    print(f"searching {len(params)} settings of {fixed.model}: " + "; ".join(p.describe() for p in params))
    _import_optuna().logging.set_verbosity(_import_optuna().logging.ERROR)  # each trial prints its own lines
    study = open_study(args, name, storage_url, fixed, params)
    for values in queued:
        study.enqueue_trial(values, skip_if_exists=True)
    objective = Objective(fixed, params, trial_data, args, name, out)
    callback: Callable[[Any, Any], None] = lambda s, _t: write_results(s, out, fixed, storage_url)  # noqa: E731
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=args.trials, timeout=args.timeout, callbacks=[callback],
                   catch=(SeqrecError, torch.OutOfMemoryError), gc_after_trial=True)
    write_results(study, out, fixed, storage_url)
    print_summary(study, out, objective.metric)
    print(f"{time.perf_counter() - t0:.0f} s in this call")
    return 0
