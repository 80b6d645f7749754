"""`seqrec serve ARTIFACT`: the HTTP service. FastAPI and uvicorn are imported only when it runs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from seqrec.errors import SeqrecError
from seqrec.serve.settings import (
    API_KEY_ENV,
    DEFAULT_STORE,
    ServeSettings,
    settings_from_args,
    settings_from_environment,
    settings_to_environment,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the `serve` subcommand."""
    p = sub.add_parser("serve", help="serve an artifact over HTTP (recommendations, events, similar items)",
                       description="Serve a trained artifact over HTTP. Writes need the X-API-Key header; "
                       f"set the key with ${API_KEY_ENV} or --api-key-file. API docs at /docs once running.")
    p.add_argument("artifact", type=Path, help="artifact directory (from `seqrec train --out` or `seqrec demo`)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--store", default=DEFAULT_STORE,
                   help="event state: sqlite:///relative.db, sqlite:////absolute.db or redis://host:port/db "
                   f"(default: {DEFAULT_STORE})")
    p.add_argument("--api-key-file", type=Path, help=f"file holding the API key (default: ${API_KEY_ENV})")
    p.add_argument("--read-requires-key", action="store_true", help="reads need the API key too")
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
    p.add_argument("--access-log", action="store_true", help="log every request (off: logs would hold user ids)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        import torch  # noqa: F401  (checked here: a missing torch gets the one-line install hint)
        import uvicorn

        from seqrec.serve.api import create_app
        from seqrec.serve.service import build_service
    except ImportError as exc:
        raise SeqrecError(f"`seqrec serve` needs {exc.name}: pip install 'seqrec[serve]'") from None
    from seqrec.serve import workers

    if settings.workers > 1 and workers.supported():
        workers.reuseport_socket(settings.host, settings.port).close()  # a taken port fails here, in one line
    _use_process_settings(settings)
    service = build_service(settings)  # a bad artifact or store fails here, before the port opens
    _announce(settings, service.version, service.store.kind)
    options: dict[str, Any] = {"host": settings.host, "port": settings.port, "access_log": settings.access_log,
                               "log_level": "info"}
    if settings.workers == 1:
        uvicorn.run(create_app(service, settings), **options)
        return 0
    service.close()  # checked; each worker loads its own copy
    os.environ.update(settings_to_environment(settings))  # the spawned workers inherit it
    if workers.supported():  # one listening socket per worker: the kernel spreads the connections
        return workers.run_workers(settings)
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=settings.workers, **options)
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
    """The per-process knobs: torch's thread count and the interpreter's GIL switch interval."""
    import torch

    torch.set_num_threads(settings.torch_threads)
    sys.setswitchinterval(settings.gil_switch_ms / 1000)


def _announce(settings: ServeSettings, version: str, store: str) -> None:
    writes = "enabled (X-API-Key)" if settings.api_key else f"DISABLED: no API key (set ${API_KEY_ENV})"
    reads = "need X-API-Key" if settings.read_requires_key else "open"
    print(f"seqrec serve: model {version}, store {store} ({settings.store}), writes {writes}, reads {reads}",
          file=sys.stderr, flush=True)
