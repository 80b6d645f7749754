"""Prometheus metrics in the text exposition format, written by hand (no extra dependency).

Labels are route templates (``/v1/users/{user_id}/recommendations``), never concrete paths,
so user ids never reach the metrics and the number of series stays fixed.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out, running = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        braces = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{braces} {self.sum!r}", f"{name}_count{braces} {self.count}"]
        return out


class Metrics:
    def __init__(self, model: str, version: str, store: str, worker: str | None = None) -> None:
        """``worker`` (set when several processes serve one port) labels every series, so the
        counters of different workers stay separate series rather than one that jumps."""
        self._lock = threading.Lock()
        self._worker = "" if worker is None else f'worker="{worker}"'
        self._info = self._labels(f'model="{model}",version="{version}",store="{store}"')
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._latency: dict[tuple[str, str], Histogram] = {}
        self._batches = Histogram(BATCH_BUCKETS)
        self._counters = {"events_stored": 0, "events_unknown_item": 0, "users_forgotten": 0}

    def _labels(self, labels: str = "") -> str:
        """``labels`` with the worker label in front, when there is one."""
        return ",".join(part for part in (self._worker, labels) if part)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, status)] += 1
            hist = self._latency.get((method, route))
            if hist is None:
                hist = self._latency[(method, route)] = Histogram(LATENCY_BUCKETS)
            hist.observe(seconds)

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self._batches.observe(size)

    def add(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self._counters[counter] += n

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP seqrec_model_info The served model.", "# TYPE seqrec_model_info gauge",
                     f"seqrec_model_info{{{self._info}}} 1"]
            lines += _header("seqrec_http_requests_total", "counter", "HTTP requests by route and status.")
            for (method, route, status), n in sorted(self._requests.items()):
                labels = self._labels(f'method="{method}",route="{route}",status="{status}"')
                lines.append(f"seqrec_http_requests_total{{{labels}}} {n}")
            lines += _header("seqrec_http_request_duration_seconds", "histogram",
                             "Time from the request's arrival to the end of its response.")
            for (method, route), hist in sorted(self._latency.items()):
                lines += hist.lines("seqrec_http_request_duration_seconds",
                                    self._labels(f'method="{method}",route="{route}"'))
            lines += _header("seqrec_score_batch_size", "histogram", "Requests scored per forward pass.")
            lines += self._batches.lines("seqrec_score_batch_size", self._labels())
            braces = f"{{{self._worker}}}" if self._worker else ""
            for name, help_text in (("events_stored", "Events written to the state store."),
                                    ("events_unknown_item", "Stored events whose item the model does not know."),
                                    ("users_forgotten", "DELETE /v1/users/{user_id} calls.")):
                lines += _header(f"seqrec_{name}_total", "counter", help_text)
                lines.append(f"seqrec_{name}_total{braces} {self._counters[name]}")
        return "\n".join(lines) + "\n"


def _header(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
