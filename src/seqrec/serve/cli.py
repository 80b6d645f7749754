"""`seqrec serve ARTIFACT`: the HTTP service. FastAPI and uvicorn are imported only when it runs."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from seqrec.errors import SeqrecError
from seqrec.serve.settings import (
    ADMIN_KEY_ENV,
    API_KEY_ENV,
    DEFAULT_STORE,
    MIN_KEY_LENGTH,
    STORE_ENV,
    ServeSettings,
    redact_url,
    settings_from_args,
    settings_from_environment,
    settings_to_environment,
    url_has_credentials,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the `serve` subcommand."""
    p = sub.add_parser("serve", help="serve an artifact over HTTP (recommendations, events, similar items)",
                       description="Serve a trained artifact over HTTP. Writes need the X-API-Key header; "
                       f"set the key with ${API_KEY_ENV} or --api-key-file. API docs at /docs once running.")
    p.add_argument("artifact", type=Path, help="artifact directory (from `seqrec train --out` or `seqrec demo`)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--store",
                   help="event state: sqlite:///relative.db, sqlite:////absolute.db or redis://host:port/db "
                   f"(default: ${STORE_ENV}, else {DEFAULT_STORE}). A URL with a password shows in `ps`: "
                   f"give it in ${STORE_ENV} or --store-file instead")
    p.add_argument("--store-file", type=Path, help="file whose first line is the store URL")
    p.add_argument("--api-key-file", type=Path,
                   help=f"file whose first line is the API key (default: ${API_KEY_ENV})")
    p.add_argument("--admin-key-file", type=Path,
                   help=f"file whose first line is the admin key for POST /v1/admin/reload, {MIN_KEY_LENGTH}+ "
                   f"characters (default: ${ADMIN_KEY_ENV}; none: reload only by SIGHUP)")
    p.add_argument("--allow-short-key", action="store_true",
                   help=f"accept an API key shorter than {MIN_KEY_LENGTH} characters")
    p.add_argument("--read-requires-key", action="store_true", help="reads need the API key too")
    p.add_argument("--pseudonymise-users", type=Path, metavar="KEYFILE",
                   help="the key of an artifact trained with --pseudonymise-users (or set $SEQREC_PSEUDONYM_KEY): "
                   "user ids in requests are mapped with it on arrival, so the store holds pseudonyms only; "
                   "required for such an artifact")
    p.add_argument("--history-cap", type=int, default=200,
                   help="posted events kept per user, oldest dropped first (default: 200)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    p.add_argument("--max-score-batch", type=int, default=64, help="requests scored in one forward pass")
    p.add_argument("--torch-threads", type=int,
                   help="torch intra-op threads per worker (default: half the cores, split among the workers)")
    p.add_argument("--workers", type=int, default=1,
                   help="service processes on one port, sharing the store (default: 1). Each loads the model; "
                   "/metrics then counts the worker that answers (label worker=<pid>)")
    p.add_argument("--gil-switch-ms", type=float, default=5.0,
                   help="how long a thread holds Python's interpreter lock before handing it over to the "
                   "HTTP loop or the scorer (default: Python's 5; 0.5 measured within noise of it)")
    p.add_argument("--device", default="cpu", help="where the model scores: cpu (default), cuda or cuda:N")
    p.add_argument("--index", choices=("exact", "approx", "auto", "hnsw", "pq", "ivfpq"), default="exact",
                   help="top-K search: exact (every item scored, equal to offline; default), approx (FAISS: HNSW "
                   "below 100k items, a 4-bit PQ scan with exact re-ranking up to 5M, IVF-PQ above; needs pip install "
                   "'seqrec[ann]'), auto (approx from 100k items), hnsw, pq or ivfpq (that index whatever the "
                   "catalog size)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="what encodes histories: torch (default) or onnxruntime (the encoder exported to ONNX at "
                   "start-up, on the CPU; needs pip install 'seqrec[onnx]')")
    p.add_argument("--access-log", action="store_true", help="log every request (off: logs would hold user ids)")
    _add_limit_flags(p)
    p.set_defaults(func=run)


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection limits (per worker process)")
    g.add_argument("--max-header-bytes", type=int, default=64 * 1024,
                   help="request line plus headers; larger heads get 431 and the connection closed (default: 65536)")
    g.add_argument("--max-headers", type=int, default=100,
                   help="header fields per request; more get 431 (default: 100)")
    g.add_argument("--read-timeout", type=float, default=10.0,
                   help="seconds from a request's first byte to its last (headers and body); slower requests get "
                   "408 and the connection closed (default: 10)")
    g.add_argument("--keep-alive", type=int, default=5,
                   help="seconds an idle connection stays open, before its first request too (default: 5)")
    g.add_argument("--max-connections", type=int, default=256,
                   help="open connections; one more is answered 503 and closed (default: 256)")
    g.add_argument("--backlog", type=int, default=2048,
                   help="connections the kernel queues before they are accepted (default: 2048)")


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        # checked here: a missing package gets the one-line install hint
        import prometheus_client  # noqa: F401
        import torch  # noqa: F401
        import uvicorn  # noqa: F401

        from seqrec.serve import api, service, workers  # noqa: F401
    except ImportError as exc:
        raise SeqrecError(f"`seqrec serve` needs {exc.name}: pip install 'seqrec[serve]'") from None

    from seqrec.serve.metrics import MULTIPROC_ENV, use_multiprocess_dir

    own_dir = MULTIPROC_ENV not in os.environ
    # Before prometheus_client is imported: every worker writes its metrics where any worker's scrape reads them.
    metrics_dir = use_multiprocess_dir() if settings.workers > 1 else None
    try:
        return _run(settings, args, metrics_dir)
    finally:
        if metrics_dir is not None and own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)


def _run(settings: ServeSettings, args: argparse.Namespace, metrics_dir: Path | None) -> int:
    import uvicorn

    from seqrec.serve import workers
    from seqrec.serve.api import create_app
    from seqrec.serve.metrics import forget_process
    from seqrec.serve.service import build_service

    reuseport = settings.workers > 1 and workers.supported()
    # A taken port fails here, in one line, before the model loads; from here on the port is ours.
    sock = workers.claim_port(settings.host, settings.port, settings.backlog, reuseport)
    try:
        _use_process_settings(settings)
        service = build_service(settings)  # a bad artifact or store fails here
    except BaseException:
        sock.close()
        raise
    _announce(settings, service.version, service.store.kind, store_in_argv=args.store is not None)
    if settings.workers == 1:
        workers.serve(create_app(service, settings), settings, sock)
        return 0
    service.close()  # checked; each worker loads its own copy
    if metrics_dir is not None:
        forget_process(metrics_dir, os.getpid())  # the check's zero counters are no worker's
    if reuseport:  # one listening socket per worker: the kernel spreads the connections
        return workers.run_workers(settings, sock)
    sock.close()  # uvicorn's own workers share one socket that uvicorn binds
    os.environ.update(settings_to_environment(settings))  # uvicorn's spawned workers inherit it
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=settings.workers, **workers.uvicorn_options(settings))
    return 0


def worker_app(settings: ServeSettings | None = None) -> Any:
    """The app of one ``--workers`` process (built in each spawned worker); without ``settings``
    (uvicorn's factory call) they are read from the environment."""
    from seqrec.serve.api import create_app
    from seqrec.serve.service import build_service

    settings = settings or settings_from_environment()
    _use_process_settings(settings)
    return create_app(build_service(settings), settings)


def _use_process_settings(settings: ServeSettings) -> None:
    """The per-process knobs: torch's thread count, the interpreter's GIL switch interval, and the
    connection limits of the HTTP protocol uvicorn builds."""
    import torch

    from seqrec.serve.workers import BoundedHttpProtocol

    torch.set_num_threads(settings.torch_threads)
    sys.setswitchinterval(settings.gil_switch_ms / 1000)
    BoundedHttpProtocol.use(settings)


def _announce(settings: ServeSettings, version: str, store: str, store_in_argv: bool) -> None:
    writes = "enabled (X-API-Key)" if settings.api_key else f"DISABLED: no API key (set ${API_KEY_ENV})"
    reads = "need X-API-Key" if settings.read_requires_key else "open"
    print(f"seqrec serve: model {version}, store {store} ({redact_url(settings.store)}), writes {writes}, "
          f"reads {reads}, on http://{settings.host}:{settings.port}", file=sys.stderr, flush=True)
    if store_in_argv and url_has_credentials(settings.store):
        print(f"seqrec serve: warning: the --store URL holds a password, which `ps` shows to every user; "
              f"give it in ${STORE_ENV} or --store-file instead", file=sys.stderr, flush=True)
