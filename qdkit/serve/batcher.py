"""Dynamic batching: items submitted by concurrent requests go through one function call per batch.

Requests await `submit(items)`; a single task on the event loop takes the waiting jobs (up to
`max_batch` items; a larger job runs alone) and runs `fn` on them in one worker thread, so the
event loop keeps reading requests while a batch is computed. Under load, requests that arrive
during a batch form the next one by themselves. Before a batch starts, the loop waits up to
`max_wait` seconds for as many requests as were in flight around the last batch, and no longer
than until they are there; a lone client's request goes straight through.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# fn(items) -> arrays whose first axis runs over the items (e.g. bitmaps, logits, probabilities)
BatchFn = Callable[[list[Any]], Sequence[np.ndarray]]


@dataclass
class _Job:
    items: list[Any]
    future: asyncio.Future = field(repr=False)
    queued_ns: int = field(default_factory=time.perf_counter_ns)


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    jobs: int = 0  # submit() calls answered by a batch that ran (not those of a failed batch)
    queue_ns: int = 0  # summed over those jobs: from submit() to the start of their batch
    compute_ns: int = 0  # summed over those jobs: their batch's fn time
    failed_jobs: int = 0
    last_batch_ms: int = 0  # wall clock (ms since the epoch) when the last batch ended
    # batch size -> [batches, fn nanoseconds]
    by_size: dict[int, list[int]] = field(default_factory=dict)


class DynamicBatcher:
    def __init__(
        self,
        fn: BatchFn,
        max_batch: int = 64,
        max_wait: float = 0.001,
        on_batch: Callable[[int, int, int], None] | None = None,
    ) -> None:
        """on_batch(jobs, items, fn nanoseconds) is called on the event loop after each batch that ran."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.fn, self.max_batch, self.max_wait = fn, int(max_batch), float(max_wait)
        self.on_batch = on_batch
        self.stats = BatcherStats()
        self._pending: collections.deque[_Job] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._expected = 1  # requests in flight around the last batch: how many the next may wait for

    async def start(self) -> None:
        """Start the batching task on the running event loop (again, if an earlier loop has gone:
        an ASGI server without lifespan events, or a test client per request)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._loop is not loop:
            self._loop, self._wakeup = loop, asyncio.Event()
            self._pending.clear()  # jobs of a loop that is gone can never be answered
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="qdkit-batch")
            self._task = loop.create_task(self._run(), name="qdkit-batcher")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, items: list[Any]) -> tuple[np.ndarray, ...]:
        """fn's arrays for `items` (in order), computed together with other requests' items."""
        if self._task is None or self._loop is not asyncio.get_running_loop():
            await self.start()
        assert self._wakeup is not None
        job = _Job(list(items), asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._wakeup.set()
        return await job.future

    def _take(self) -> list[_Job]:
        jobs = [self._pending.popleft()]
        n = len(jobs[0].items)
        while self._pending and n + len(self._pending[0].items) <= self.max_batch:
            job = self._pending.popleft()
            jobs.append(job)
            n += len(job.items)
        return jobs

    async def _stragglers(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._wakeup is not None
        deadline = loop.time() + self.max_wait
        while len(self._pending) < self._expected and sum(len(j.items) for j in self._pending) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _run(self) -> None:
        assert self._wakeup is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._stragglers(loop)
            jobs = self._take()
            items = [item for job in jobs for item in job.items]
            started = time.perf_counter_ns()
            try:
                arrays = await loop.run_in_executor(self._executor, self.fn, items)
            except Exception as e:  # handed to every waiting request; the loop serves on
                self.stats.failed_jobs += len(jobs)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            finally:
                self._expected = len(jobs) + len(self._pending)
            took = time.perf_counter_ns() - started
            stats = self.stats
            stats.batches += 1
            stats.items += len(items)
            stats.largest = max(stats.largest, len(items))
            stats.jobs += len(jobs)
            stats.queue_ns += sum(started - job.queued_ns for job in jobs)
            stats.compute_ns += took * len(jobs)
            stats.last_batch_ms = time.time_ns() // 1_000_000
            size = stats.by_size.setdefault(len(items), [0, 0])
            size[0] += 1
            size[1] += took
            if self.on_batch is not None:
                self.on_batch(len(jobs), len(items), took)
            start = 0
            for job in jobs:
                stop = start + len(job.items)
                if not job.future.done():  # a request whose client went away is cancelled
                    job.future.set_result(tuple(a[start:stop] for a in arrays))
                start = stop
