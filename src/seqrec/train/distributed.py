"""Data-parallel (DDP) and sharded (FSDP2) training under torchrun.

torchrun starts one process per rank and sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`start` joins
the process group it describes (gloo on the CPU, NCCL on CUDA). The training loop stays one plain
loop: :class:`Replicas` wraps the module (``DistributedDataParallel``, or ``fully_shard`` with
``shard="full"``), :class:`RankBatches` gives each rank its share of every global batch, and
rank 0 alone evaluates, checkpoints and writes; the others receive its decisions by broadcast.
:func:`launch` is ``seqrec train --nproc N``: torchrun's own launcher, run in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn

from seqrec.data.batch import TrainBatches
from seqrec.data.sequences import Sequences
from seqrec.devices import resolve_device
from seqrec.errors import SeqrecError
from seqrec.train.config import TrainConfig

SHARDS = ("none", "full")  # none: every rank holds the whole model (DDP); full: FSDP2 shards it
PROCESS_MEMORY = 512 * 2**20  # bytes a training process needs at the least (torch alone takes ~300 MB)
PROCESSES_PER_CPU = 4  # more processes than this per core only queue for the cores
REPORTED_BY_LAUNCHER = "SEQREC_LAUNCHER_REPORTS"  # set for the workers of `seqrec train --nproc`
DIST_TIMEOUT = 1800.0  # seconds a collective may wait (rank 0 validates while the others wait)
T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that evaluates, logs, checkpoints and writes the artifact."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def current() -> Ranks:
    """The ranks of the process group :func:`start` joined, or a single process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def launched(env: Mapping[str, str]) -> bool:
    """Whether torchrun started this process (it sets WORLD_SIZE and LOCAL_RANK)."""
    return "WORLD_SIZE" in env and "LOCAL_RANK" in env


def start(env: Mapping[str, str], device_name: str, timeout_s: float) -> Ranks:
    """Join the process group torchrun set up (a no-op outside torchrun, or with one process).

    The backend follows the device: NCCL on CUDA, each process on the GPU of its local rank; gloo
    on the CPU. A collective that waits longer than ``timeout_s`` fails instead of hanging."""
    if not launched(env):
        return Ranks()
    follow_launcher()
    if int(env["WORLD_SIZE"]) <= 1:
        return Ranks()
    device = resolve_device(device_name)
    if device.type == "cuda":
        if device.index is not None and int(env.get("LOCAL_WORLD_SIZE", "1")) > 1:
            raise SeqrecError(f"--device {device_name}: with several processes on a node each takes the GPU of its "
                              "local rank; use --device cuda or auto")
        local = int(env["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise SeqrecError(f"local rank {local} has no GPU: {torch.cuda.device_count()} here; start at most that "
                              "many processes per node")
        torch.cuda.set_device(local)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise SeqrecError(f"--device {device_name}: distributed training runs on the CPU (gloo) or CUDA (NCCL)")
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return current()


def follow_launcher(interval_s: float = 0.5) -> None:
    """End this process when its launcher is gone. torchrun starts each rank in a session of its own,
    so a SIGKILL of the launcher (or of its process group: a scheduler's kill, Ctrl-C's SIGKILL) would
    leave the ranks training on as orphans, writing the checkpoint a --resume is about to read."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)  # no cleanup: the launcher that would report it is gone too

    threading.Thread(target=watch, name="seqrec-launcher-watch", daemon=True).start()


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        # a DDP wrapper caught in a reference cycle still holds the group: free it first, or its
        # threads meet the interpreter's exit (an abort, now and then)
        gc.collect()
        dist.destroy_process_group()


def broadcast(value: T, ranks: Ranks) -> T:
    """Rank 0's ``value`` on every rank (a small picklable object: metrics, loop state)."""
    if not ranks.active:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return cast(T, box[0])


def all_sum(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Element-wise sum of ``values`` over the ranks (in place; returned for chaining)."""
    if ranks.active:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class RankBatches(TrainBatches):
    """This rank's share of every global batch.

    The epoch's order (the same seeded permutation on every rank, bucketed by length as for one
    process) is cut into global batches of ``batch_size * world`` windows; rank r takes every
    world-th window of each, starting at r. A global batch too small to give every rank a window
    (at most the last one, of fewer than ``world`` windows) is skipped, so that every rank takes the
    same number of steps. With one rank this is :class:`TrainBatches` itself."""

    def __init__(self, train: Sequences, max_len: int, batch_size: int, sliding: bool, bucket: bool,
                 ranks: Ranks) -> None:
        super().__init__(train, max_len, batch_size * ranks.world, sliding, bucket)
        self.ranks = ranks

    def __len__(self) -> int:
        full, rest = divmod(self.windows.shape[0], self.batch_size)
        return full + (rest >= self.ranks.world)

    def _batches(self, generator: torch.Generator) -> list[torch.Tensor]:
        world, rank = self.ranks.world, self.ranks.rank
        return [rows[rank::world] for rows in super()._batches(generator) if len(rows) >= world]


class Replicas:
    """The model as the processes hold it: whole in one process; a DDP replica per rank; or, with
    ``shard="full"``, FSDP2 shards (each layer of a stack its own unit, the rest in the root).

    ``net`` is what the loop calls; ``model`` is the plain module rank 0 evaluates and returns.
    Under FSDP rank 0 trains a sharded copy and keeps ``model`` plain, loading the gathered
    weights into it to evaluate; the other ranks shard ``model`` itself, which they do not return."""

    def __init__(self, model: nn.Module, shard: str, device: torch.device, ranks: Ranks) -> None:
        self.model, self.ranks = model, ranks
        self.shard = shard if ranks.active else "none"
        self.net: nn.Module = model
        if self.shard == "full":
            from torch.distributed.fsdp import fully_shard

            self.net = copy.deepcopy(model) if ranks.main else model
            for stack in [m for m in self.net.modules() if isinstance(m, nn.ModuleList)]:
                for block in stack:
                    fully_shard(block)
            fully_shard(self.net)
        elif ranks.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index if device.index is not None else torch.cuda.current_device()] \
                if device.type == "cuda" else None
            # static graph: a parameter some model never uses (HSTU's time bias without timestamps) is
            # found unused in the first step and left out of the reduction from then on
            self.net = DistributedDataParallel(model, device_ids=ids, static_graph=True)

    @property
    def trained(self) -> nn.Module:
        """The module whose parameters the optimizer updates (sharded under FSDP)."""
        return self.net if self.shard == "full" else self.model

    def model_state(self) -> dict[str, torch.Tensor] | None:
        """The whole model's current weights on rank 0 (None elsewhere). Under FSDP a fresh CPU copy
        gathered from the shards (every rank must call this); otherwise the live tensors."""
        if self.shard == "full":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(self.net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return cast(dict[str, torch.Tensor], state) if self.ranks.main else None
        return dict(self.model.state_dict()) if self.ranks.main else None

    def snapshot(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A copy of ``state`` that later steps do not change."""
        if self.shard == "full":
            return state  # gathered: already a copy
        return {k: v.detach().clone().cpu() for k, v in state.items()}

    def eval_model(self, state: dict[str, torch.Tensor] | None) -> nn.Module:
        """The plain module holding the current weights (rank 0; ``state`` from :meth:`model_state`)."""
        if self.shard == "full" and state is not None:
            self.model.load_state_dict(state)
        return self.model

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
        """The optimizer's state on rank 0 (None elsewhere); under FSDP gathered, keyed by parameter
        name (every rank must call this), otherwise the optimizer's own state dict."""
        if self.shard == "full":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            state = get_optimizer_state_dict(self.net, opt,
                                             options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return state if self.ranks.main else None
        return opt.state_dict() if self.ranks.main else None

    def load(self, opt: torch.optim.Optimizer, model_state: dict[str, torch.Tensor] | None,
             opt_state: dict[str, Any] | None) -> None:
        """Restore a checkpoint that rank 0 read (the states are None on the other ranks)."""
        if self.shard == "full":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            set_model_state_dict(self.net, dict(model_state or {}), options=options)
            set_optimizer_state_dict(self.net, opt, opt_state or {}, options=options)
            if model_state is not None:
                self.model.load_state_dict(model_state)
            return
        model_state, opt_state = broadcast((model_state, opt_state), self.ranks)
        assert model_state is not None and opt_state is not None
        self.model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)

    def release(self) -> None:
        """Drop the wrapper (DDP's gradient hooks go with it); ``model`` stays usable."""
        self.net = self.model


# ---- launching: `seqrec train --nproc N` ---------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """torchrun's options for `seqrec train`: where and how many processes (not part of the run's config)."""

    nproc: int = 1  # processes on this node
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # host:port of the c10d rendezvous (several nodes)
    rdzv_timeout: float = 300.0  # seconds to wait for every node to join

    @property
    def needed(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1


LAUNCH_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-timeout")


def worker_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` without the launch options (each worker trains; it does not launch again)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{f}=" for f in LAUNCH_FLAGS)):
            out.append(arg)
    return out


def check_launch(launch: Launch, device_name: str, cpus: int, available_bytes: int) -> None:
    """Refuse a launch this machine cannot hold, before starting anything."""
    if launch.nproc < 1 or launch.nnodes < 1:
        raise SeqrecError("--nproc and --nnodes must be at least 1")
    if not 0 <= launch.node_rank < launch.nnodes:
        raise SeqrecError(f"--node-rank {launch.node_rank} must be between 0 and --nnodes - 1 ({launch.nnodes - 1})")
    if launch.nnodes > 1 and not launch.rdzv_endpoint:
        raise SeqrecError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT, the same on every node")
    if launch.rdzv_endpoint is not None:
        host, _, port = launch.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SeqrecError(f"--rdzv-endpoint {launch.rdzv_endpoint!r} is not HOST:PORT")
    if launch.rdzv_timeout <= 0:
        raise SeqrecError("--rdzv-timeout must be a positive number of seconds")
    if resolve_device(device_name).type == "cuda":
        gpus = torch.cuda.device_count()
        if launch.nproc > gpus:
            raise SeqrecError(f"--nproc {launch.nproc}: this node has {gpus} GPU(s); start one process per GPU")
        return
    most = min(cpus * PROCESSES_PER_CPU, available_bytes // PROCESS_MEMORY)
    if launch.nproc > most:
        raise SeqrecError(f"--nproc {launch.nproc}: this machine holds at most {max(most, 0)} training processes "
                          f"({cpus} CPU cores, {available_bytes / 2**30:.1f} GiB memory available); use fewer")


def torchrun_argv(launch: Launch, argv: Sequence[str]) -> list[str]:
    """torchrun's command line for `seqrec train ARGV` (``-m seqrec``), no restarts: a failure ends the run."""
    out = ["--nproc-per-node", str(launch.nproc), "--nnodes", str(launch.nnodes), "--max-restarts", "0"]
    if launch.rdzv_endpoint is None:
        out.append("--standalone")  # one node: a rendezvous on a free local port
    else:
        timeout = int(max(1, round(launch.rdzv_timeout)))
        out += ["--node-rank", str(launch.node_rank), "--rdzv-backend", "c10d", "--rdzv-id", "seqrec",
                "--rdzv-endpoint", launch.rdzv_endpoint,
                "--rdzv-conf", f"join_timeout={timeout},read_timeout={timeout}"]
    return [*out, "-m", "seqrec", *worker_argv(argv)]


@dataclass(frozen=True)
class Outcome:
    status: int  # the exit status for `seqrec train`
    message: str | None = None  # one line for stderr, when it failed


def launch_processes(launch: Launch, argv: Sequence[str], threads: int | None) -> Outcome:
    """Run torchrun's launcher in this process: start the ranks, wait, stop them all when one fails.

    ``threads`` is each process's torch thread count (OMP_NUM_THREADS for the workers)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import get_args_parser, run

    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the workers torchrun starts
    os.environ[REPORTED_BY_LAUNCHER] = "1"
    for name in ("torch.distributed.run", "torch.distributed.elastic"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # its failure reports are replaced by one line
    args = get_args_parser().parse_args(torchrun_argv(launch, argv))
    try:
        run(args)
    except ChildFailedError as exc:
        return _failed(exc)
    except RendezvousError as exc:
        where = launch.rdzv_endpoint or "localhost"
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return Outcome(2, f"--rdzv-endpoint {where}: the {launch.nnodes} nodes did not all join within "
                          f"{launch.rdzv_timeout:g} s ({detail}); check the address and that every node runs "
                          "the same command")
    return Outcome(0)


def _failed(exc: Any) -> Outcome:
    """One line for the first failed rank: its exit status, or the signal that killed it."""
    rank, failure = min(exc.failures.items(), key=lambda kv: kv[1].timestamp)
    code = failure.exitcode
    if code < 0:
        import signal

        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with status {code}"
    if code == 2:  # bad input: the ranks' own one-line error is printed already
        return Outcome(2)
    return Outcome(1, f"training process rank {rank} (pid {failure.pid}) {how}; the other processes were "
                      "stopped. Rerun with --resume to continue from the last checkpoint")


# ---- `seqrec train`'s side: its launch flags, and each worker's process group ---------------------


def add_launch_args(parser: argparse.ArgumentParser) -> None:
    """The launch flags of `seqrec train` (how many processes where: not part of the artifact's config)."""
    g = parser.add_argument_group("distributed training (docs/distributed.md)")
    g.add_argument("--nproc", type=int, default=1, help="training processes on this node, started with torchrun "
                   "(data-parallel; --shard full shards the model across them); default: 1, no torchrun")
    g.add_argument("--nnodes", type=int, default=1, help="nodes taking part; each runs the same command")
    g.add_argument("--node-rank", type=int, default=0, help="this node's rank, 0 to --nnodes - 1 (the c10d "
                   "rendezvous assigns the process ranks)")
    g.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="the c10d rendezvous address every node can "
                   "reach (needed with --nnodes > 1; the node whose address it is hosts it)")
    g.add_argument("--rdzv-timeout", type=float, default=Launch().rdzv_timeout,
                   help=f"seconds to wait for every node to join (default: {Launch().rdzv_timeout:g})")
    g.add_argument("--dist-timeout", type=float, default=DIST_TIMEOUT,
                   help="seconds a process waits for the others in a collective (validation on rank 0 "
                   f"included) before failing (default: {DIST_TIMEOUT:g})")


def launch_from(args: argparse.Namespace) -> Launch:
    return Launch(args.nproc, args.nnodes, args.node_rank, args.rdzv_endpoint, args.rdzv_timeout)


def available_memory() -> int:
    """Bytes of memory a new process can take: the kernel's MemAvailable (free pages plus the cache it
    can drop), else the free pages, else unknown (no limit)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 2**62


def launch_train(launch: Launch, argv: Sequence[str] | None, env: Mapping[str, str], cfg: TrainConfig) -> Outcome:
    """`seqrec train ARGV` as ``launch.nproc`` torchrun processes on this node (checked first)."""
    if cfg.privacy.enabled:
        raise SeqrecError("--dp-epsilon: DP-SGD trains in one process; drop --nproc / --nnodes")
    if cfg.item_optimizer == "sparse":
        raise SeqrecError("--item-optimizer sparse trains in one process; drop --nproc / --nnodes, or use dense")
    device_name = cfg.device
    if argv is None:
        raise SeqrecError("--nproc: this entry point cannot relaunch itself; run `torchrun ... -m seqrec train`")
    cpus = os.cpu_count() or 1
    check_launch(launch, device_name, cpus, available_memory())
    if launch.rdzv_endpoint is not None:
        reach_endpoint(launch.rdzv_endpoint, launch.rdzv_timeout)
    threads = None if "OMP_NUM_THREADS" in env else max(1, cpus // launch.nproc)
    return launch_processes(launch, argv, threads)


def reach_endpoint(endpoint: str, timeout_s: float) -> None:
    """Fail with one line when the rendezvous endpoint of another machine cannot be reached within
    ``timeout_s`` (torchrun would say so in pages of C++ log). An address of this machine is the one
    this node hosts: nothing to reach yet."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError as exc:
        raise SeqrecError(f"--rdzv-endpoint {endpoint}: cannot resolve {host!r} ({exc.strerror})") from None
    if any(_local(str(info[4][0]), info[0]) for info in infos):
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=max(0.1, min(5.0, deadline - time.monotonic()))
                                     ).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                why = exc.strerror or type(exc).__name__
                raise SeqrecError(f"--rdzv-endpoint {endpoint}: not reachable within {timeout_s:g} s ({why}); "
                                  "check the address and port, and start the node at that address") from None
            time.sleep(0.5)


def _local(address: str, family: int) -> bool:
    """Whether ``address`` belongs to this machine (it can bind to it)."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


@contextmanager
def worker(env: Mapping[str, str], device_name: str, timeout_s: float) -> Iterator[Ranks]:
    """One rank of a torchrun launch (or the only process): joins the group, prints nothing but errors
    unless rank 0, and leaves the group at the end. A collective that fails because another rank
    died or hung ends this one with one line instead of a traceback."""
    ranks = start(env, device_name, timeout_s)
    try:
        with contextlib.ExitStack() as stack:
            if not ranks.main:  # rank 0 speaks for all
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            yield ranks
    except SeqrecError as exc:
        if ranks.main:
            raise
        if env.get(REPORTED_BY_LAUNCHER) and env.get("LOCAL_RANK") != "0":
            raise SystemExit(2) from None  # the node's first rank says it (the same data, the same error)
        raise SeqrecError(f"rank {ranks.rank}: {exc}") from None
    except RuntimeError as exc:  # DistError included
        if not (ranks.active and _collective_failed(exc)):
            raise  # a bug: its traceback
        if env.get(REPORTED_BY_LAUNCHER):
            raise LostRanks("") from None  # `seqrec train --nproc` names the rank that failed, in one line
        raise LostRanks(f"rank {ranks.rank}: a collective with the other training processes failed "
                        f"({' '.join(str(exc).split())[:160]}); one of them died or stopped answering") from None
    finally:
        stop()


def _collective_failed(exc: RuntimeError) -> bool:
    """Whether ``exc`` is a collective that lost its peers (gloo and NCCL raise plain RuntimeErrors)."""
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(w in text for w in ("gloo", "NCCL", "Connection", "Timed out"))


class LostRanks(Exception):
    """Another training process died or hung (not the user's input: exit status 1). An empty message:
    the launcher reports it."""
