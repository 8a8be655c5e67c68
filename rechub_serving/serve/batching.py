"""Micro-batching: concurrent requests gathered into one computation, bounded in size and in waiting time.

A request becomes a :class:`Job` (its number of users, a grouping key and its
payload) submitted to a :class:`MicroBatcher`. One collector task on the event
loop forms batches: it takes the oldest job, adds queued jobs while the batch
has room, and waits for more only while requests that have arrived at the
server are still on their way to the queue (:class:`Arrivals`) and the oldest
job has waited less than ``max_wait_ms``. A lone client therefore never waits
for a batch that cannot fill, and under load batches fill while the previous
one computes. Batches run in a thread pool (``threads`` at a time) so the event
loop keeps reading requests while numpy or onnxruntime compute without the
GIL; with ``threads=0`` they run on the event loop itself (no thread hand-off,
but no reading while a batch computes: slower in our measurements). If a
batch's computation raises, each of its jobs is run again alone, so one bad
job cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .config import BatchConfig
from .errors import RequestError

__all__ = ["Arrivals", "Job", "MicroBatcher"]

logger = logging.getLogger("rechub_serving.serve")


@dataclass(eq=False)
class Job:
    """One request's work: ``size`` users, a ``key`` (jobs of a batch are grouped by it) and a ``payload``."""

    size: int
    key: Hashable
    payload: Any
    future: asyncio.Future = field(repr=False)
    enqueued: float = field(default_factory=time.monotonic)
    started: float = 0.0


class Arrivals:
    """How many batchable requests have reached the server but not yet the queue (they are parsing)."""

    def __init__(self) -> None:
        self.count = 0
        self._listeners: list[Callable[[], None]] = []

    def expect(self) -> None:
        self.count += 1

    def settle(self) -> None:
        """One expected request reached the queue or gave up (an error response)."""
        self.count -= 1
        for listener in self._listeners:
            listener()

    def listen(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)


RunBatch = Callable[[list[Job]], list[Any]]


class MicroBatcher:
    """Gather jobs into batches and run each with ``run(jobs) -> results`` (an exception instance fails its job)."""

    def __init__(
        self,
        name: str,
        run: RunBatch,
        config: BatchConfig,
        *,
        arrivals: Arrivals | None = None,
        on_batch: Callable[[list[Job], float], None] | None = None,
    ):
        self.name = name
        self._run = run
        self.max_batch = int(config.max_batch)
        self.max_wait = float(config.max_wait_ms) / 1000.0
        self.max_queue = int(config.max_queue)
        self.threads = int(config.threads)
        self.arrivals = arrivals or Arrivals()
        self._on_batch = on_batch
        self._queue: collections.deque[Job] = collections.deque()
        self.queued_users = 0
        self.running_jobs = 0
        self._wake: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._collector: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self.arrivals.listen(self._notify)

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max(1, self.threads))
        if self.threads > 0:
            self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=f"rechub-{self.name}")
        self._collector = asyncio.get_running_loop().create_task(self._collect(), name=f"rechub-{self.name}-batcher")

    async def stop(self) -> None:
        """Finish every queued and running job, then stop (new submissions are refused)."""
        self._stopping = True
        self._notify()
        if self._collector is not None:
            await self._collector
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- submission ------------------------------------------------------------------------------------
    async def submit(self, size: int, key: Hashable, payload: Any, timeout: float) -> Any:
        """Queue one job and wait for its result; 503 when the queue is full or stopping, 504 after ``timeout``."""
        if self._stopping or self._collector is None:
            raise RequestError(503, "shutting_down", "the server is shutting down; retry on another instance")
        if self.queued_users + size > self.max_queue and self.queued_users > 0:
            raise RequestError(
                503, "overloaded", f"the server is overloaded ({self.queued_users} users queued); retry shortly",
                headers={"Retry-After": "1"},
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        job = Job(size, key, payload, future)
        self._queue.append(job)
        self.queued_users += size
        self._notify()
        timer = loop.call_later(timeout, self._expire, job, timeout)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, job: Job, timeout: float) -> None:
        """The request's time is up: it fails with 504, and leaves the queue if it is still there."""
        if job.future.done():
            return
        job.future.set_exception(
            RequestError(
                504, "timeout", f"no answer within the request timeout ({timeout:g} s); the server is too busy"
            )
        )
        try:
            self._queue.remove(job)
            self.queued_users -= job.size
        except ValueError:  # already in a batch: its result is dropped
            pass

    # -- batching -------------------------------------------------------------------------------------
    async def _collect(self) -> None:
        assert self._slots is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            batch = await self._next_batch()
            if not batch:
                self._slots.release()
                return
            if self._executor is None:
                await self._execute(batch)
                continue
            task = loop.create_task(self._execute(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _pop(self) -> Job:
        job = self._queue.popleft()
        self.queued_users -= job.size
        return job

    async def _next_batch(self) -> list[Job]:
        assert self._wake is not None
        while True:
            while self._queue and self._queue[0].future.done():  # timed out while queued
                self._pop()
            if self._queue:
                break
            if self._stopping:
                return []
            self._wake.clear()
            await self._wake.wait()
        first = self._pop()
        batch, size = [first], first.size
        deadline = first.enqueued + self.max_wait
        while size < self.max_batch:
            if self._queue:
                job = self._queue[0]
                if job.future.done():
                    self._pop()
                    continue
                if size + job.size > self.max_batch:
                    break
                batch.append(self._pop())
                size += job.size
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping or self.arrivals.count <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                break
        return batch

    async def _execute(self, batch: list[Job]) -> None:
        assert self._slots is not None
        self.running_jobs += len(batch)
        start = time.monotonic()
        for job in batch:
            job.started = start
        try:
            if self._executor is None:
                results = self._run_isolated(batch)  # on the event loop: no hand-off
            else:
                results = await asyncio.get_running_loop().run_in_executor(self._executor, self._run_isolated, batch)
            for job, result in zip(batch, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
            if self._on_batch is not None:
                self._on_batch(batch, time.monotonic() - start)
        except BaseException as exc:  # the executor itself failed: never leave a request hanging
            logger.exception("batch of %d %s requests failed", len(batch), self.name)
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            if not isinstance(exc, Exception):
                raise
        finally:
            self.running_jobs -= len(batch)
            self._slots.release()

    def _run_isolated(self, batch: list[Job]) -> list[Any]:
        try:
            results = self._run(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"the batch function returned {len(results)} results for {len(batch)} jobs")
            return results
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            logger.debug("batch of %d jobs failed (%s); running each job alone", len(batch), exc)
            return [self._run_isolated([job])[0] for job in batch]
