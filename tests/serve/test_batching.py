"""The micro-batcher in isolation: gathering, bounds, isolation of a failing job, timeouts, overload, draining."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rechub_serving.serve.batching import Arrivals, MicroBatcher
from rechub_serving.serve.compute import params_key
from rechub_serving.serve.config import BatchConfig
from rechub_serving.serve.errors import RequestError, public_message
from rechub_serving.serve.recall import recall_counts


class Recorder:
    """A batch function that answers each job with its payload doubled and remembers the batches."""

    def __init__(self, delay: float = 0.0, fail_on: object = None):
        self.batches: list[list[object]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, jobs):
        self.threads.add(threading.current_thread().name)
        self.batches.append([job.payload for job in jobs])
        time.sleep(self.delay)
        if any(job.payload == self.fail_on for job in jobs):
            raise ValueError("bad payload")
        return [job.payload * 2 for job in jobs]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_jobs_are_gathered_within_the_bound():
    recorder = Recorder(delay=0.02)

    async def main():
        batcher = MicroBatcher("t", recorder, BatchConfig(max_batch=4, max_wait_ms=50))
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(1, "k", i, timeout=10) for i in range(10)))
        await batcher.stop()
        return results

    assert run(main()) == [2 * i for i in range(10)]
    sizes = [len(b) for b in recorder.batches]
    assert max(sizes) == 4 and sum(sizes) == 10 and len(sizes) < 10
    assert all(name.startswith("rechub-t") for name in recorder.threads), "batches run off the event loop"


def test_a_large_job_runs_alone_and_order_is_kept():
    recorder = Recorder()

    async def main():
        batcher = MicroBatcher("t", recorder, BatchConfig(max_batch=4, max_wait_ms=20))
        await batcher.start()
        results = await asyncio.gather(batcher.submit(1, "k", 1, 10), batcher.submit(9, "k", 2, 10),
                                       batcher.submit(1, "k", 3, 10))  # fmt: skip
        await batcher.stop()
        return results

    assert run(main()) == [2, 4, 6]
    assert [2] in recorder.batches


def test_a_failing_job_does_not_fail_its_neighbours():
    recorder = Recorder(fail_on=3)

    async def main():
        batcher = MicroBatcher("t", recorder, BatchConfig(max_batch=8, max_wait_ms=50))
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(1, "k", i, 10) for i in range(6)), return_exceptions=True)
        await batcher.stop()
        return results

    results = run(main())
    assert isinstance(results[3], ValueError)
    assert [r for i, r in enumerate(results) if i != 3] == [0, 2, 4, 8, 10]


def test_timeout_overload_and_stop():
    slow = Recorder(delay=0.3)

    async def main():
        batcher = MicroBatcher("t", slow, BatchConfig(max_batch=1, max_wait_ms=0, max_queue=2))
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(1, "k", 1, 10))
        await asyncio.sleep(0.05)  # computing now
        with pytest.raises(RequestError) as timeout:
            await batcher.submit(1, "k", 2, timeout=0.05)
        queued = [asyncio.ensure_future(batcher.submit(1, "k", i, 10)) for i in (3, 4)]
        await asyncio.sleep(0)
        with pytest.raises(RequestError) as overload:
            await batcher.submit(1, "k", 5, 10)
        await batcher.stop()  # drains what was accepted
        with pytest.raises(RequestError) as stopped:
            await batcher.submit(1, "k", 6, 10)
        return timeout.value, overload.value, stopped.value, await first, [await q for q in queued]

    timeout, overload, stopped, first, queued = run(main())
    assert (timeout.status, timeout.kind) == (504, "timeout")
    assert (overload.status, overload.kind, overload.headers) == (503, "overloaded", {"Retry-After": "1"})
    assert (stopped.status, stopped.kind) == (503, "shutting_down")
    assert first == 2 and queued == [6, 8]
    assert [2] not in slow.batches, "a job that timed out while queued is not computed"


def test_a_lone_request_does_not_wait_for_a_batch_that_cannot_fill():
    async def main():
        arrivals = Arrivals()
        batcher = MicroBatcher("t", Recorder(), BatchConfig(max_batch=64, max_wait_ms=2000), arrivals=arrivals)
        await batcher.start()
        start = time.monotonic()
        await batcher.submit(1, "k", 1, 10)
        alone = time.monotonic() - start
        arrivals.expect()  # another request is on its way: the batch waits for it (until it arrives)
        start = time.monotonic()
        task = asyncio.ensure_future(batcher.submit(1, "k", 2, 10))

        async def arrive():
            await asyncio.sleep(0.2)
            arrivals.settle()
            return await batcher.submit(1, "k", 3, 10)

        results = await asyncio.gather(task, arrive())
        waited = time.monotonic() - start
        await batcher.stop()
        return alone, waited, results

    alone, waited, results = run(main())
    assert alone < 0.5 and 0.15 < waited < 1.5 and results == [4, 6]


def test_params_key_keeps_types_apart():
    assert params_key(10, {"ef": 1}) != params_key(10, {"ef": True}) != params_key(10, {"ef": 1.0})
    assert params_key(10, {"a": 1, "b": 2}) == params_key(10, {"b": 2, "a": 1})
    assert params_key(10, {}) != params_key(5, {})


def test_public_message_strips_paths():
    text = "the index /tmp/x/y/items.index has dimension 8; see C:\\data\\m\\tower.onnx or http://host:19530/db"
    out = public_message(text)
    assert "/tmp" not in out and "items.index" in out and "tower.onnx" in out and "C:" not in out
    assert "http://host:19530/db" in out


def test_recall_counts_ignore_padding():
    import numpy as np

    hits, relevant = recall_counts(np.array([[1, 2, -1], [4, 5, 6]]), np.array([[1, 3, -1], [6, 5, 4]]))
    assert hits.tolist() == [1, 3] and relevant.tolist() == [2, 3]
    hits, relevant = recall_counts(np.array([["a", None]], dtype=object), np.array([["a", "b"]], dtype=object))
    assert hits.tolist() == [1] and relevant.tolist() == [2]
