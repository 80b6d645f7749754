"""What the service does, independent of HTTP: events in, recommendations out, users forgotten.

The HTTP layer (api.py, routes/) only translates; everything here can be called and tested
directly. Errors are typed so the HTTP layer can map them to status codes.

Two worker threads do the heavy lifting, each through a :class:`MicroBatcher`:

* the scorer reads the histories of all queued recommendation requests and ranks them with one
  forward pass;
* the writer appends all queued event posts in one transaction, so one fsync covers them all
  (group commit) while each post is still acknowledged only once it is durable.

``submit_*`` methods return futures (the async HTTP handlers await them without a thread hop);
the plain methods wait for the result.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqrec.artifact import load_artifact
from seqrec.devices import resolve_device
from seqrec.errors import SeqrecError
from seqrec.privacy.ids import verify_key
from seqrec.serve.batching import MicroBatcher
from seqrec.serve.index import ExternalId, Ranked, ScoreRequest, ServedModel, model_version
from seqrec.serve.metrics import Metrics
from seqrec.serve.settings import ServeSettings
from seqrec.serve.state import RecurrentStepper, history_digest, is_recurrent
from seqrec.serve.store import CachedState, Event, EventStore, StoreError, UserState, open_store

_EMPTY = np.zeros(0, dtype=np.int64)
RESULT_CACHE_ENTRIES = 16_384  # ranked lists kept by (model, history, k, options); see Service._score_batch
_ResultKey = tuple[str, bytes, int, bool, bytes, int]


class ServeError(SeqrecError):
    """A request the service cannot answer; ``code`` is a stable machine-readable name."""

    code = "bad_request"


class NotFound(ServeError):
    code = "not_found"


class Invalid(ServeError):
    code = "invalid_request"


class ReloadFailed(ServeError):
    """The new artifact is missing, corrupt or incompatible; the old model keeps serving."""

    code = "reload_failed"


@dataclass(frozen=True)
class EventInput:
    user_id: ExternalId
    item_id: ExternalId
    timestamp: float | None = None


@dataclass(frozen=True)
class Scored:
    item_id: ExternalId
    score: float
    title: str | None


@dataclass(frozen=True)
class Recommendations:
    items: list[Scored]
    history_length: int  # known history items (the model reads the last max_len; all are excluded)
    unknown_items: int  # history entries the model does not know (skipped)
    version: str = ""  # the model version these were scored with


@dataclass(frozen=True)
class EventsAdded:
    accepted: int
    unknown_item_ids: list[str]  # distinct, in order of first appearance


@dataclass(frozen=True)
class _UserQuery:
    user_id: ExternalId
    k: int
    exclude_seen: bool


@dataclass(frozen=True)
class _HistoryQuery:
    request: ScoreRequest
    unknown: int


class Service:
    def __init__(self, index: ServedModel, store: EventStore, history_cap: int = 200,
                 max_score_batch: int = 64, clock: Callable[[], float] = time.time,
                 worker: str | None = None, loader: Callable[[Path], ServedModel] | None = None,
                 artifact: Path | None = None, keep_state: bool = True,
                 result_cache: int = RESULT_CACHE_ENTRIES) -> None:
        # Swapped whole by reload(): a reader takes ``self.index`` once and uses that model throughout.
        self.index = index
        self._loader = loader
        self.artifact = artifact
        self._reload_lock = threading.Lock()
        # With --workers N: passes a reload on to the other workers (seqrec.serve.workers.SupervisorLink); the
        # future gets every worker's version. None in a single process.
        self.peers: Callable[[Path, str], Future[dict[str, str]]] | None = None
        self.store = store
        self.history_cap = history_cap
        self.clock = clock
        # Recurrent models keep each user's hidden state in the store (see seqrec.serve.state).
        self.keep_state = keep_state
        self._steppers: weakref.WeakKeyDictionary[ServedModel, RecurrentStepper | None] = weakref.WeakKeyDictionary()
        self.state_hits = 0  # user recommendations scored from a stored state (scorer thread only)
        self.state_misses = 0  # ... re-encoded although the model keeps states (none, stale, or too long)
        # The answer to a recommendation is a function of the model, the history and the options: the ranked
        # lists of the last ``result_cache`` distinct ones are kept (in this process's memory; keyed by a digest
        # of the history, never by a user id: a model with user features adds the internal row of the user's
        # features), so a user read again before their next event is not scored again.
        self.result_cache = result_cache
        self._results: OrderedDict[_ResultKey, list[Scored]] = OrderedDict()
        self.cache_hits = 0  # recommendations answered from it (scorer thread only)
        self.metrics = Metrics(index.model_name, index.version, store.kind, worker)
        self._scorer = MicroBatcher(self._score_batch, max_score_batch, self.metrics.observe_batch,
                                    name="seqrec-scorer")
        self._writer = MicroBatcher(self._write_batch, 256, name="seqrec-writer")

    @property
    def version(self) -> str:
        return self.index.version

    @property
    def scored_requests(self) -> int:
        """Recommendation requests the scorer has read histories for and ranked."""
        return self._scorer.processed

    @property
    def skipped_requests(self) -> int:
        """Recommendation requests cancelled while queued (their clients left) and never scored."""
        return self._scorer.dropped

    def reload(self, artifact: Path | None = None) -> tuple[str, str]:
        """Load ``artifact`` (default: the one served) and swap it in atomically; returns (old, new) version.

        A missing, corrupt or incompatible artifact raises :class:`ReloadFailed` and the old model keeps
        serving. Compatible: every item and user id the served model knows keeps its internal index (a
        retrained or updated artifact; new ids may follow), so stored histories and queued requests
        carry over. Requests already being scored finish with the model they started with.
        """
        if self._loader is None:
            raise ReloadFailed("this service was built without an artifact loader; reload is not available")
        path = Path(artifact) if artifact is not None else self.artifact
        if path is None:
            raise ReloadFailed("no artifact path to reload from")
        with self._reload_lock:
            old = self.index
            try:
                new = self._loader(path)
            except SeqrecError as exc:
                raise ReloadFailed(f"reload of {path} failed, still serving {old.version}: {exc}") from None
            except Exception as exc:  # whatever a damaged artifact raises, the old model keeps serving
                raise ReloadFailed(f"reload of {path} failed, still serving {old.version}: "
                                   f"{type(exc).__name__}: {exc}") from None
            problem = incompatibility(old, new)
            if problem:
                raise ReloadFailed(f"reload of {path} refused, still serving {old.version}: {problem}")
            self.index = new
            self.artifact = path
            self._results = OrderedDict()  # the old model's answers: never used again, free them now
            self.metrics.set_model(new.model_name, new.version)
            self.metrics.add("model_reloads")
            return old.version, new.version

    def close(self) -> None:
        self._scorer.close()
        self._writer.close()
        self.store.close()
        if self.scored_requests:  # for the operator (and the load benchmark): how often the cache answered
            print(f"seqrec serve: {self.scored_requests} recommendation requests scored, {self.cache_hits} of them "
                  "from the result cache", file=sys.stderr, flush=True)

    # ---- writes ---------------------------------------------------------------------------
    def submit_events(self, events: Sequence[EventInput]) -> Future[EventsAdded]:
        now = self.clock()
        users, items = self.index.users, self.index.items
        stored = [Event(users.canonical(e.user_id), items.canonical(e.item_id),
                        now if e.timestamp is None else float(e.timestamp)) for e in events]
        return self._writer.submit(stored)

    def _write_batch(self, posts: list[list[Event]]) -> list[EventsAdded | Exception]:
        """One transaction for every queued post: all of them are durable, or none is. A recurrent model's
        user states advance in the same transaction."""
        index = self.index
        stepper = self.stepper(index)
        advance = None if stepper is None else (lambda user, state: self._advance(index, stepper, user, state))
        self.store.append([e for post in posts for e in post], self.history_cap, advance)
        out: list[EventsAdded | Exception] = []
        for post in posts:
            unknown = [e.item_id for e in post if self.index.items.internal(e.item_id) < 0]
            self.metrics.add("events_stored", len(post))
            self.metrics.add("events_unknown_item", len(unknown))
            out.append(EventsAdded(len(post), list(dict.fromkeys(unknown))))
        return out

    def forget(self, user_id: ExternalId) -> int:
        """Erase the user's events; a user from the training data also stops getting their
        artifact history. Returns the number of stored events erased."""
        canonical = self.index.users.canonical(user_id)
        in_artifact = self.index.users.internal(canonical) >= 0
        n = self.store.forget(canonical, tombstone=in_artifact)
        self.metrics.add("users_forgotten")
        return n

    # ---- reads ----------------------------------------------------------------------------
    def submit_user(self, user_id: ExternalId, k: int, exclude_seen: bool = True) -> Future[Recommendations]:
        self._check_k(k, self.index.n_items)
        return self._scorer.submit(_UserQuery(user_id, k, exclude_seen))

    def submit_history(self, history: Sequence[ExternalId], k: int, exclude: Sequence[ExternalId] = (),
                       exclude_seen: bool = True) -> Future[Recommendations]:
        self._check_k(k, self.index.n_items)
        items = self.index.items
        internal = items.internal_many([items.canonical(i) for i in history])
        known = internal[internal > 0]  # no cap: the schema bounds it, and offline uses it whole
        if not len(known):
            raise Invalid("none of the history items are known to the model; check the item ids")
        banned = items.internal_many([items.canonical(i) for i in exclude])
        request = ScoreRequest(known, k, exclude_seen, banned[banned > 0])
        return self._scorer.submit(_HistoryQuery(request, int((internal < 0).sum())))

    def recommend_history(self, history: Sequence[ExternalId], k: int, exclude: Sequence[ExternalId] = (),
                          exclude_seen: bool = True) -> Recommendations:
        return self.submit_history(history, k, exclude, exclude_seen).result()

    def stepper(self, index: ServedModel) -> RecurrentStepper | None:
        """The recurrent state stepper of ``index``'s model; None for other models or with states off."""
        # A stored state encodes the unknown user: a model with user features re-encodes (with the user's row).
        if not self.keep_state or index.backend != "torch" or not is_recurrent(index.model) or index.user_features:
            return None
        if index not in self._steppers:
            self._steppers[index] = RecurrentStepper(index.model)
        return self._steppers[index]

    def _advance(self, index: ServedModel, stepper: RecurrentStepper, user: str,
                 state: UserState) -> CachedState | None:
        """The user's state after their new events: the stored state stepped over the items it lacks when it
        is this model's state of a prefix of the history, else one pass over the history; None (keep no
        state) for a history longer than the model's window, which a state cannot slide."""
        history, _ = self._history(index, user, state)
        if not 0 < len(history) <= stepper.max_len:
            return None
        old, rnn = state.cached, None
        if (old is not None and old.version == index.version and 0 < old.length <= len(history)
                and old.digest == history_digest(history[: old.length])):
            rnn = stepper.from_bytes(old.data, old.length)
        rnn = stepper.from_history(history) if rnn is None else stepper.advance(rnn, history[rnn.length:])
        return CachedState(index.version, len(history), history_digest(history), stepper.to_bytes(rnn))

    def _state_query(self, index: ServedModel, history: np.ndarray, cached: CachedState | None) -> torch.Tensor | None:
        """The query from the stored state when it is this model's state of exactly this history."""
        stepper = self.stepper(index)
        if stepper is None:
            return None
        if (cached is None or cached.version != index.version or cached.length != len(history)
                or len(history) > stepper.max_len or cached.digest != history_digest(history)):
            self.state_misses += 1
            return None
        rnn = stepper.from_bytes(cached.data, cached.length)
        if rnn is None:
            self.state_misses += 1
            return None
        self.state_hits += 1
        return stepper.query(rnn)

    def user_history(self, user_id: ExternalId, index: ServedModel | None = None) -> tuple[np.ndarray, int]:
        """(internal item ids oldest first; number of unknown items skipped).

        The artifact history is used whole, as offline recommendation does (so every item seen in
        training stays excluded); the cap bounds the posted events, which grow without end.
        """
        ix = self.index if index is None else index
        canonical = ix.users.canonical(user_id)
        return self._history(ix, canonical, self.store.user_state(canonical, self.history_cap))

    def _history(self, ix: ServedModel, canonical: str, state: UserState) -> tuple[np.ndarray, int]:
        user = ix.users.internal(canonical)
        from_artifact = user >= 0 and not state.forgotten
        if not from_artifact and not state.items:
            raise NotFound(f"unknown user {canonical!r}: not in the training data and no events posted; "
                           "POST /v1/events first")
        posted = ix.items.internal_many(state.items)
        base = ix.artifact_history(user) if from_artifact else _EMPTY
        history = np.concatenate([base, posted[posted > 0]])
        return history, int((posted < 0).sum())

    def _prepare(self, query: _UserQuery | _HistoryQuery, index: ServedModel) -> _HistoryQuery:
        if isinstance(query, _HistoryQuery):
            return query
        canonical = index.users.canonical(query.user_id)
        stepper = self.stepper(index)
        state = self.store.user_state(canonical, self.history_cap, with_cache=stepper is not None)
        history, unknown = self._history(index, canonical, state)
        if not len(history):
            raise Invalid(f"user {str(query.user_id)!r} has only events on items the model does not know; "
                          "nothing to score from")
        # the user's feature row: a user of the training data, unless forgotten (then their features are too)
        user = index.users.internal(canonical) if index.user_features and not state.forgotten else -1
        return _HistoryQuery(ScoreRequest(history, query.k, query.exclude_seen, _EMPTY,
                                          self._state_query(index, history, state.cached), user), unknown)

    def _score_batch(self, queries: list[_UserQuery | _HistoryQuery]) -> list[Recommendations | Exception]:
        """Runs on the scorer thread: read the histories, then one forward pass for all of them."""
        index = self.index  # one model for the whole batch, even if a reload swaps it meanwhile
        prepared: list[_HistoryQuery | Exception] = []
        for q in queries:
            try:
                prepared.append(self._prepare(q, index))
            except (ServeError, StoreError) as exc:  # fails this request only
                prepared.append(exc)
        cache = self._results
        keys = [None if isinstance(p, Exception) else _result_key(index.version, p.request) for p in prepared]
        found: dict[int, list[Scored]] = {}
        for n, key in enumerate(keys):
            if key is not None and self.result_cache and key in cache:
                cache.move_to_end(key)
                found[n] = cache[key]
        todo = [n for n, p in enumerate(prepared) if isinstance(p, _HistoryQuery) and n not in found]
        self.cache_hits += len(found)
        if todo:
            ranked = index.score([p.request for n in todo if isinstance(p := prepared[n], _HistoryQuery)])
            for n, r in zip(todo, ranked, strict=True):
                found[n] = self._scored(r, index)
                key = keys[n]
                if self.result_cache and key is not None:
                    cache[key] = found[n]
            while len(cache) > self.result_cache:
                cache.popitem(last=False)
        return [p if isinstance(p, Exception) else
                Recommendations(list(found[n]), len(p.request.history), p.unknown, index.version)
                for n, p in enumerate(prepared)]

    def similar(self, item_id: ExternalId, k: int) -> tuple[ExternalId, list[Scored]]:
        """(the item's id as the artifact spells it, its k nearest items)."""
        index = self.index
        self._check_k(k, index.n_items - 1)
        items = index.items
        item = items.internal(items.canonical(item_id))
        if item < 0:
            raise NotFound(f"unknown item {items.canonical(item_id)!r}: it was not in the training data")
        return items.external_of(item), self._scored(index.similar(item, k), index)

    def ping(self) -> None:
        self.store.ping()

    @staticmethod
    def _check_k(k: int, limit: int) -> None:
        if not 1 <= k <= limit:
            raise Invalid(f"k={k} must be between 1 and {limit} (the number of items that can be returned)")

    def _scored(self, ranked: Ranked, index: ServedModel | None = None) -> list[Scored]:
        ix = self.index if index is None else index
        return [Scored(ix.items.external_of(i), float(s), ix.title(i))
                for i, s in zip(ranked.items.tolist(), ranked.scores.tolist(), strict=True)]


def _result_key(version: str, request: ScoreRequest) -> _ResultKey:
    """What a ranked list depends on: the model, the history (in order), k, the exclusions, and the user's
    feature row (-1 but for a model with user features)."""
    return (version, history_digest(request.history), request.k, request.exclude_seen,
            history_digest(request.banned) if len(request.banned) else b"", request.user)


def build_service(settings: ServeSettings) -> Service:
    """Load the artifact and open the store; a bad artifact or unreachable store raises a
    SeqrecError here, at start-up, rather than on the first request."""
    def load(path: Path) -> ServedModel:
        artifact = load_artifact(path)
        verify_key(artifact.info, settings.pseudonym_key, str(path))  # on reloads too: never mix raw and keyed ids
        artifact.model.to(resolve_device(settings.device))
        return ServedModel(artifact, model_version(artifact), settings.index, settings.backend, settings.torch_threads,
                           settings.pseudonym_key)

    index = load(settings.artifact)
    store = open_store(settings.store)
    from seqrec.serve.new_items import with_added_items  # items added with PUT /v1/items, kept in the store

    index = with_added_items(index, store)
    worker = str(os.getpid()) if settings.workers > 1 else None
    return Service(index, store, settings.history_cap, settings.max_score_batch, worker=worker,
                   loader=lambda path: with_added_items(load(path), store), artifact=settings.artifact)


def incompatibility(old: ServedModel, new: ServedModel) -> str | None:
    """Why ``new`` cannot replace ``old`` in place, or None: every id ``old`` knows must keep its index."""
    for what, a, b in (("item", old.items, new.items), ("user", old.users, new.users)):
        if len(b) < len(a) or b.external[: len(a)] != a.external:
            return (f"its {what} ids differ from the served model's ({len(b)} vs {len(a)} {what}s, or the same "
                    f"ids in another order): a different id space; train it with `seqrec update` from this "
                    f"artifact or restart the service on it")
    return None
