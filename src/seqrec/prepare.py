"""`seqrec prepare --data LOG --out PREPARED`: read and clean a large log once, out of core, and write it as
memory-mapped arrays; `seqrec train --prepared PREPARED` then trains from them without reading the log."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from seqrec.data import prepared
from seqrec.data.io import ReadOptions
from seqrec.data.preprocess import PreprocessOptions
from seqrec.settings import Flag, add_flag, check_given, flag_help, flags_of, from_dict, given


def _flags() -> list[Flag]:
    return [*flags_of(ReadOptions, ("read",)), *flags_of(PreprocessOptions, ("preprocess",))]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the `prepare` subcommand."""
    p = sub.add_parser("prepare", help="read and clean a large log once, out of core, for `train --prepared`",
                       description="Read a CSV/TSV file, a Parquet file or a directory of Parquet files (one log, "
                       "e.g. a file per day) in record batches, clean it as `seqrec train --data` would (the same "
                       "column and cleaning flags), and write the sequences and id maps as memory-mapped arrays "
                       "to OUT; `seqrec train --prepared OUT` trains from them without reading the log again.")
    p.add_argument("--data", type=Path, required=True, help="the log: a file, or a directory of Parquet files")
    p.add_argument("--out", type=Path, required=True, help="the folder to write (written whole or not at all)")
    p.add_argument("--force", action="store_true", help="replace an existing prepared dataset at OUT")
    read = p.add_argument_group("reading the log")
    clean = p.add_argument_group("cleaning the log")
    for flag in _flags():
        group = read if flag.path[0] == "read" else clean
        add_flag(group, flag, flag_help(flag, _default(flag)))
    p.set_defaults(func=cmd_prepare)


def _default(flag: Flag) -> Any:
    base: Any = ReadOptions() if flag.path[0] == "read" else PreprocessOptions()
    return getattr(base, flag.path[1])


def cmd_prepare(args: argparse.Namespace) -> int:
    flags = _flags()
    check_given(args, flags)
    chosen = given(args, flags)
    read = from_dict(ReadOptions, chosen.get("read", {}), "the command line")
    preprocess = from_dict(PreprocessOptions, chosen.get("preprocess", {}), "the command line")
    t0 = time.perf_counter()
    data = prepared.prepare(args.data, args.out, read, preprocess, force=args.force)
    seconds = time.perf_counter() - t0
    from seqrec.cli import print_dataset  # the summary and cleaning report `seqrec train` prints

    print_dataset(data)
    print(f"prepared in {seconds:.1f} s, written to {args.out}; train with: seqrec train --prepared {args.out}")
    return 0
