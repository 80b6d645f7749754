"""Prometheus metrics through ``prometheus_client``, in its multiprocess mode under ``--workers N``.

Labels are route templates (``/v1/users/{user_id}/recommendations``), never concrete paths,
so user ids never reach the metrics and the number of series stays fixed.

With several workers, ``seqrec serve`` sets ``$PROMETHEUS_MULTIPROC_DIR`` (see :func:`use_multiprocess_dir`)
before anything imports ``prometheus_client``: every worker writes its counters and histograms to files
there, and a scrape of any worker reads them all, each series labelled with its ``worker`` (pid).
``seqrec_model_info`` is the answering worker's own line (it names the model that worker serves).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
COUNTERS = {"events_stored": "Events written to the state store.",
            "events_unknown_item": "Stored events whose item the model does not know.",
            "users_forgotten": "DELETE /v1/users/{user_id} calls.",
            "model_reloads": "Models swapped in by POST /v1/admin/reload or SIGHUP."}


def use_multiprocess_dir() -> Path:
    """The directory the workers share (``$PROMETHEUS_MULTIPROC_DIR``, else a fresh temporary one, set in
    the environment). Call it before ``prometheus_client`` is imported anywhere in the process."""
    given = os.environ.get(MULTIPROC_ENV)
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="seqrec-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def forget_process(path: Path, pid: int) -> None:
    """Remove the files a process (the supervisor's start-up check) left in the multiprocess directory."""
    for f in path.glob(f"*_{pid}.db"):
        f.unlink(missing_ok=True)


class Metrics:
    def __init__(self, model: str, version: str, store: str, worker: str | None = None) -> None:
        """``worker`` (set when several processes serve one port) labels every series, so the
        counters of different workers stay separate series rather than one that jumps."""
        import prometheus_client as prom

        prom.disable_created_metrics()
        self._prom = prom
        self._lock = threading.Lock()
        self._multiproc_dir = os.environ.get(MULTIPROC_ENV) if worker is not None else None
        self._worker = "" if worker is None else f'worker="{worker}"'
        self._store = store
        self._info = self._labels(f'model="{model}",version="{version}",store="{store}"')
        self.registry = prom.CollectorRegistry(auto_describe=True)
        front = ["worker"] if worker is not None else []
        self._front = [worker] if worker is not None else []
        self._requests = prom.Counter("seqrec_http_requests", "HTTP requests by route and status.",
                                      [*front, "method", "route", "status"], registry=self.registry)
        self._latency = prom.Histogram("seqrec_http_request_duration_seconds",
                                       "Time from the request's arrival to the end of its response.",
                                       [*front, "method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._batches = prom.Histogram("seqrec_score_batch_size", "Requests scored per forward pass.", front,
                                       buckets=BATCH_BUCKETS, registry=self.registry)
        self._counters = {name: prom.Counter(f"seqrec_{name}", text, front, registry=self.registry)
                          for name, text in COUNTERS.items()}
        if worker is not None:  # series exist from the start, as label-less ones do
            self._batches.labels(*self._front)
            for counter in self._counters.values():
                counter.labels(*self._front)

    def _labels(self, labels: str = "") -> str:
        """``labels`` with the worker label in front, when there is one."""
        return ",".join(part for part in (self._worker, labels) if part)

    def set_model(self, model: str, version: str) -> None:
        """After a reload: seqrec_model_info names the model now served."""
        with self._lock:
            self._info = self._labels(f'model="{model}",version="{version}",store="{self._store}"')

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._requests.labels(*self._front, method, route, str(status)).inc()
        self._latency.labels(*self._front, method, route).observe(seconds)

    def observe_batch(self, size: int) -> None:
        (self._batches.labels(*self._front) if self._front else self._batches).observe(size)

    def add(self, counter: str, n: int = 1) -> None:
        c = self._counters[counter]
        (c.labels(*self._front) if self._front else c).inc(n)

    def render(self) -> str:
        prom = self._prom
        with self._lock:
            info = self._info
        head = ("# HELP seqrec_model_info The served model.\n# TYPE seqrec_model_info gauge\n"
                f"seqrec_model_info{{{info}}} 1\n")
        if self._multiproc_dir:
            from prometheus_client import multiprocess

            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self._multiproc_dir)
            return head + exposition(registry)
        return head + exposition(self.registry)


def exposition(registry: Any) -> str:
    """The text format 0.0.4, as ``generate_latest`` writes it but with ``le`` the last label and whole
    numbers without ``.0`` (the form this service has always written, which scrapers and tests read)."""
    lines: list[str] = []
    for metric in registry.collect():
        name = metric.name + ("_total" if metric.type == "counter" else "")
        lines += [f"# HELP {name} {metric.documentation}", f"# TYPE {name} {metric.type}"]
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            labels = sorted(sample.labels.items(), key=lambda kv: kv[0] == "le")  # stable: le last
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{sample.name}{{{text}}} {_number(sample.value)}" if text else
                         f"{sample.name} {_number(sample.value)}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))
