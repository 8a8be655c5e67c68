"""What one micro-batch computes: one user-tower run for every user, one index query per group.

Requests in a batch may differ in ``k``, search parameters and exclusions.
Exclusions are per user anyway (each row of the index query has its own), so
requests are grouped only by ``(k, search parameters)``; each group is one
index query. Results are cut back per request and encoded to JSON here, on
the batch thread, so the event loop only sends bytes. An engine error in a
group is retried request by request, so only the request that caused it
fails, with a 4xx when its input was at fault. Sampled requests go to the
recall monitor after they are answered.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import IndexClosedError, InvalidInputError, InvalidParameterError, RechubError
from .batching import Job
from .errors import RequestError, public_message
from .recall import RecallMonitor
from .store import LoadedModel, ModelStore

__all__ = ["RecommendPayload", "SearchPayload", "params_key", "run_recommend", "run_search"]

logger = logging.getLogger("rechub_serving.serve")


@dataclass
class RecommendPayload:
    users: list[Mapping[str, Any]]
    k: int
    seen: list[list[Any] | None] | None
    exclude_seen: bool
    params: dict[str, Any]


@dataclass
class SearchPayload:
    vectors: list[list[float]]
    k: int
    exclude: list[list[Any] | None] | None
    params: dict[str, Any]


def params_key(k: int, params: Mapping[str, Any]) -> Hashable:
    """The grouping key: requests with equal k and search parameters share one index query.

    The value's type is part of the key: ``1``, ``1.0`` and ``true`` are equal in
    Python but may mean different things to an engine.
    """
    return (k, tuple(sorted((name, type(value).__name__, value) for name, value in params.items())))


def _as_request_error(exc: RechubError) -> RequestError:
    message = public_message(str(exc))
    if isinstance(exc, InvalidParameterError):
        return RequestError(422, "invalid_search_params", f"search_params: {message}", "search_params")
    if isinstance(exc, InvalidInputError):
        return RequestError(422, "invalid_input", message)
    if isinstance(exc, IndexClosedError):
        return RequestError(503, "unavailable", "the model was being replaced; retry the request")
    return RequestError(500, "backend_error", message)


def _valid(ids: np.ndarray) -> np.ndarray:
    return ids != None if ids.dtype == object else ids >= 0  # noqa: E711 (element-wise)


def _groups(jobs: Sequence[Job]) -> dict[Hashable, list[int]]:
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for j, job in enumerate(jobs):
        groups[job.key].append(j)
    return groups


def _query_groups(jobs: Sequence[Job], run_group: Callable[[list[int]], list[Any]]) -> list[Any]:
    """Run every group; a group that raises an engine error is run again one request at a time."""
    results: list[Any] = [None] * len(jobs)
    for members in _groups(jobs).values():
        try:
            answers = run_group(members)
        except RechubError as exc:
            if len(members) == 1:
                answers = [_as_request_error(exc)]
            else:
                answers = []
                for j in members:
                    try:
                        answers.extend(run_group([j]))
                    except RechubError as one:
                        answers.append(_as_request_error(one))
        for j, answer in zip(members, answers):
            results[j] = answer
    return results


def _single_job_errors(run: Callable[[ModelStore, RecallMonitor | None, list[Job]], list[Any]]):
    """An engine error of a one-job batch is that request's 4xx (a larger batch is split by the batcher)."""

    def wrapped(store: ModelStore, monitor: RecallMonitor | None, jobs: list[Job]) -> list[Any]:
        try:
            return run(store, monitor, jobs)
        except RechubError as exc:
            if len(jobs) == 1:
                return [_as_request_error(exc)]
            raise

    wrapped.__doc__ = run.__doc__
    return wrapped


def _k_within(k: int, count: int) -> int:
    """``k``, at most the index's size (an empty index keeps ``k``: the query pads)."""
    return min(k, count) if count else k


def _bodies(
    sizes: list[int],
    ids: np.ndarray,
    values: np.ndarray,
    keep: np.ndarray,
    key: str,
    tail: bytes,
    sample: Callable[[slice], None],
) -> list[bytes]:
    """One JSON body per job of a group: its rows of ``ids`` and ``values`` (under ``key``) where ``keep``.

    ``sizes`` are the jobs' row counts in order; ``sample`` gets each job's rows for the recall monitor.
    """
    out, start = [], 0
    for n in sizes:
        part = slice(start, start + n)
        body = [{"ids": ids[i][keep[i]].tolist(), key: values[i][keep[i]].tolist()} for i in range(start, start + n)]
        out.append(b'{"results": ' + json.dumps(body).encode() + tail)
        sample(part)
        start += n
    return out


@_single_job_errors
def run_recommend(store: ModelStore, monitor: RecallMonitor | None, jobs: list[Job]) -> list[Any]:
    """Answer a batch of recommend requests: a JSON body (bytes) or a :class:`RequestError` per job."""
    with store.acquire() as model:
        retriever = model.retriever
        names = retriever.feature_names
        users = [user for job in jobs for user in job.payload.users]
        feeds, history = retriever.encode({name: [user[name] for user in users] for name in names})
        vectors = retriever.embed(feeds)
        offsets = np.cumsum([0] + [job.size for job in jobs]).tolist()
        head = f', "generation": {model.generation}, "model_hash": {json.dumps(model.model_hash)}}}'.encode()

        def run_group(members: list[int]) -> list[bytes]:
            payloads: list[RecommendPayload] = [jobs[j].payload for j in members]
            rows = np.concatenate([np.arange(offsets[j], offsets[j + 1]) for j in members])
            excluding = any(p.exclude_seen for p in payloads)
            exclude = None
            if excluding:
                hist: list[Any] = []
                seen: list[Any] = []
                for j, p in zip(members, payloads):
                    n = jobs[j].size
                    if p.exclude_seen:
                        hist.extend(history[offsets[j] : offsets[j + 1]])
                        seen.extend(p.seen if p.seen is not None else [None] * n)
                    else:
                        hist.extend([[]] * n)
                        seen.extend([None] * n)
                exclude = retriever.exclusions(len(rows), hist, seen)
            k_eff = _k_within(payloads[0].k, len(model.index))
            group_vectors = vectors[rows]
            result = model.index.query(group_vectors, k_eff, exclude=exclude, **payloads[0].params)
            ids, scores = np.asarray(result.indices), np.asarray(result.scores, dtype=np.float32)
            return _bodies(
                [jobs[j].size for j in members], ids, scores, np.isfinite(scores), "scores", head,
                lambda part: _sample(monitor, model, group_vectors[part], k_eff, exclude[part] if exclude else None,
                                     ids[part]),
            )  # fmt: skip

        return _query_groups(jobs, run_group)


@_single_job_errors
def run_search(store: ModelStore, monitor: RecallMonitor | None, jobs: list[Job]) -> list[Any]:
    """Answer a batch of vector searches: a JSON body (bytes) or a :class:`RequestError` per job."""
    with store.acquire() as model:
        tail = f', "generation": {model.generation}, "metric": "{model.index.metric.value}"}}'.encode()

        def run_group(members: list[int]) -> list[bytes]:
            payloads: list[SearchPayload] = [jobs[j].payload for j in members]
            vectors = np.asarray([v for p in payloads for v in p.vectors], dtype=np.float32)
            exclude: list[list[Any]] | None = None
            if any(p.exclude is not None for p in payloads):
                exclude = []
                for j, p in zip(members, payloads):
                    exclude.extend(list(r or []) for r in (p.exclude or [None] * jobs[j].size))
            k_eff = _k_within(payloads[0].k, len(model.index))
            result = model.index.query(vectors, k_eff, exclude=exclude, **payloads[0].params)
            ids, dists = np.asarray(result.indices), np.asarray(result.distances, dtype=np.float32)
            return _bodies(
                [jobs[j].size for j in members], ids, dists, _valid(ids) & np.isfinite(dists), "distances", tail,
                lambda part: _sample(monitor, model, vectors[part], k_eff, exclude[part] if exclude else None,
                                     ids[part]),
            )  # fmt: skip

        return _query_groups(jobs, run_group)


def _sample(
    monitor: RecallMonitor | None,
    model: LoadedModel,
    vectors: np.ndarray,
    k: int,
    exclude: list[list[Any]] | None,
    served: np.ndarray,
) -> None:
    if monitor is not None and model.reference is not None and monitor.wants():
        monitor.offer(model.generation, model.reference, vectors, k, exclude, served)
