"""The privacy parts of the command line: pseudonymised and excluded users at ingest, artifacts
without histories, ``seqrec forget``. :mod:`seqrec.cli` calls these; the key's environment
variable is read there."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.data.config import DataConfig
from seqrec.data.config import load_data as plain_load_data
from seqrec.data.ids import IdMap
from seqrec.data.preprocess import Dataset
from seqrec.data.sequences import Sequences
from seqrec.errors import SeqrecError
from seqrec.privacy import ids
from seqrec.privacy.forget import forget


def add_key_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--pseudonymise-users", type=Path, metavar="KEYFILE",
                   help=f"{what} (or set ${ids.ENV_KEY}); the key is never written anywhere")


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("privacy of user ids (docs/privacy.md)")
    g.add_argument("--pseudonymise-users", type=Path, metavar="KEYFILE",
                   help=f"replace every user id by HMAC-SHA256(key, id) as the log is read (or set "
                   f"${ids.ENV_KEY} to the key); the key is never written anywhere")
    g.add_argument("--keep-histories", action="store_true",
                   help="with pseudonymised users: still write the per-user histories into the artifact "
                   "(default: written without them; recommend from --history or a service's store)")
    g.add_argument("--exclude-users", type=Path, metavar="FILE",
                   help="user ids (one per line) whose events are dropped before anything is built: "
                   "training them out of the model")


def key_from(args: argparse.Namespace, env_key: str | None) -> bytes | None:
    """The key from --pseudonymise-users KEYFILE, else from the environment variable, else None."""
    path = getattr(args, "pseudonymise_users", None)
    if path is not None:
        return ids.read_key(path)
    if env_key:
        return ids.check_key(env_key.encode(), f"${ids.ENV_KEY}")
    return None


def ingest_from(args: argparse.Namespace, env_key: str | None) -> ids.Ingest:
    exclude = ids.read_user_file(args.exclude_users) if args.exclude_users is not None else frozenset()
    return ids.Ingest(key_from(args, env_key), exclude)


def load_training_data(config: DataConfig, ingest: ids.Ingest) -> tuple[Dataset, int]:
    """The run's data, pseudonymised and without excluded users when asked: (dataset, rows dropped)."""
    if not ingest.active:
        return plain_load_data(config), 0
    return ids.load_data(config, ingest)


def no_histories(dataset: Dataset) -> Dataset:
    """``dataset`` without users and histories: what an artifact written without them holds."""
    empty = Sequences(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return replace(dataset, sequences=empty, users=IdMap(dataset.users.external[:0].copy(), dataset.users.offset))


def record(info: dict[str, Any], ingest: ids.Ingest, dropped: int, histories: bool) -> None:
    """What the artifact's info.json says about ids (never the ids, the key or the excluded list)."""
    info["pseudonymised_users"] = ingest.key is not None
    if ingest.key is not None:
        info["pseudonym_key_check"] = ids.key_check(ingest.key)
    info["histories"] = histories
    if ingest.exclude:
        info["excluded_users"] = len(ingest.exclude)
        info["excluded_rows"] = dropped


def cmd_forget(args: argparse.Namespace, env_key: str | None) -> int:
    users = [args.user] if args.user is not None else sorted(ids.read_user_file(args.users))
    if not users:
        raise SeqrecError("give --user ID or --users FILE")
    left = forget(args.artifact, users, key_from(args, env_key))
    print(f"{len(users)} user(s) removed from {args.artifact} ({left:,} left); the model's weights are unchanged: "
          f"`seqrec retrain {args.artifact} --exclude-users FILE` trains them out")
    return 0


def add_forget_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("forget", help="remove users' ids and histories from an artifact, atomically")
    p.add_argument("artifact", type=Path, help="an artifact directory written by `seqrec train --out`")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="the user id to forget")
    who.add_argument("--users", type=Path, help="a file of user ids to forget, one per line")
    add_key_arg(p, "the artifact's pseudonymisation key: --user is a raw id, mapped with it")
    return p
