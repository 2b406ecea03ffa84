"""Dynamic batching: items submitted by concurrent requests go through one function call per batch.

Requests await `submit(items)`; a single task on the event loop fills each batch of up to
`max_batch` items from the waiting jobs, round-robin: every waiting job gets a fair share of the
batch (a job larger than its share is split and goes on in the next batches), so a one-item
request waits about one batch however many 1,024-item jobs are queued. The batch runs `fn` in one
worker thread, so the event loop keeps reading requests while it is computed. Under load, requests
that arrive during a batch form the next one by themselves. Before a batch starts, the loop waits up
to `max_wait` seconds for as many requests as were in flight around the last batch, and no longer
than until they are there; a lone client's request goes straight through.

Isolation: an error belongs to the job it came from. `fn` may raise `ItemErrors` (results for the
good items, an exception per bad one): each job with a bad item gets `JobItemError` naming its own
item, the others their results. Any other exception from a batch of several jobs is not handed to
all of them: each job is run again alone (at most one call per job of that batch), and only a job
that fails alone gets its exception.

`saturated()` says whether the queue is longer than `ready_queue` items or a batch has computed for
longer than `ready_busy_s` seconds: the readiness probes answer not-ready then.
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


class ItemErrors(Exception):
    """Raised by a batch function whose bad items must cost only themselves: `arrays` for every item
    (a bad item's rows are ignored) and `errors` {index in the batch: the exception for that item}."""

    def __init__(self, arrays: Sequence[np.ndarray], errors: dict[int, Exception]) -> None:
        super().__init__(f"{len(errors)} bad item(s) in a batch")
        self.arrays, self.errors = arrays, errors


class JobItemError(Exception):
    """What submit() raises for a job whose item `index` (its position in that job) failed."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(f"item {index}: {error}")
        self.index, self.error = index, error


@dataclass(eq=False)
class _Job:
    items: list[Any]
    future: asyncio.Future = field(repr=False)
    queued_ns: int = field(default_factory=time.perf_counter_ns)
    done: int = 0  # items taken into batches so far
    parts: list[Sequence[np.ndarray]] = field(default_factory=list, repr=False)
    started_ns: int = 0  # when its first piece's batch started

    @property
    def left(self) -> int:
        return len(self.items) - self.done


@dataclass(eq=False)
class _Piece:
    job: _Job
    start: int
    stop: int


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    jobs: int = 0  # submit() calls answered (all their pieces computed)
    queue_ns: int = 0  # summed over those jobs: from submit() to the start of their first batch
    compute_ns: int = 0  # summed over those jobs: their batches' fn time
    failed_jobs: int = 0
    retried_batches: int = 0  # batches that failed as a whole and were run again job by job
    last_batch_ms: int = 0  # wall clock (ms since the epoch) when the last batch ended
    # batch size -> [batches, fn nanoseconds]
    by_size: dict[int, list[int]] = field(default_factory=dict)


READY_QUEUE = 4096  # items waiting: over this, saturated() (4 requests of MAX_DRAWINGS)
READY_BUSY_S = 2.0  # one batch computing for longer than this: saturated()


class DynamicBatcher:
    def __init__(
        self,
        fn: BatchFn,
        max_batch: int = 64,
        max_wait: float = 0.001,
        on_batch: Callable[[int, int, int], None] | None = None,
        ready_queue: int = READY_QUEUE,
        ready_busy_s: float = READY_BUSY_S,
    ) -> None:
        """on_batch(jobs, items, fn nanoseconds) is called on the event loop after each batch that ran."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.fn, self.max_batch, self.max_wait = fn, int(max_batch), float(max_wait)
        self.on_batch = on_batch
        self.ready_queue, self.ready_busy_s = int(ready_queue), float(ready_busy_s)
        self.stats = BatcherStats()
        self._pending: collections.deque[_Job] = collections.deque()  # round-robin order
        self._queued = 0  # items of the pending jobs not yet taken into a batch
        self._busy_since = 0.0  # time.monotonic() when the running batch started; 0: none running
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._expected = 1  # requests in flight around the last batch: how many the next may wait for

    def saturated(self) -> str | None:
        """Why the batcher should get no more traffic now (queue too long, a batch too slow), or None."""
        if self._queued > self.ready_queue:
            return f"{self._queued:,} items queued (more than {self.ready_queue:,})"
        busy = time.monotonic() - self._busy_since if self._busy_since else 0.0
        if busy > self.ready_busy_s:
            return f"a batch has been computing for {busy:.1f} s (more than {self.ready_busy_s:g} s)"
        return None

    async def start(self) -> None:
        """Start the batching task on the running event loop (again, if an earlier loop has gone:
        an ASGI server without lifespan events, or a test client per request)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._loop is not loop:
            self._loop, self._wakeup = loop, asyncio.Event()
            self._pending.clear()  # jobs of a loop that is gone can never be answered
            self._queued = 0
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
        self._queued = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, items: list[Any]) -> tuple[np.ndarray, ...]:
        """fn's arrays for `items` (in order), computed together with other requests' items."""
        if self._task is None or self._loop is not asyncio.get_running_loop():
            await self.start()
        assert self._wakeup is not None
        job = _Job(list(items), asyncio.get_running_loop().create_future())
        if not job.items:
            raise ValueError("submit() needs at least one item")
        self._pending.append(job)
        self._queued += len(job.items)
        self._wakeup.set()
        return await job.future

    def _drop_gone(self) -> None:
        """Forget jobs whose request has gone (cancelled) or failed: their items are not computed."""
        if any(job.future.done() for job in self._pending):
            for job in [j for j in self._pending if j.future.done()]:
                self._queued -= job.left
            self._pending = collections.deque(j for j in self._pending if not j.future.done())

    def _take(self) -> list[_Piece]:
        """The next batch: a fair share of max_batch for each waiting job (round-robin order), the
        room left over to the jobs in that order; served jobs with items left go to the back."""
        self._drop_gone()
        jobs = list(self._pending)
        room, grant = self.max_batch, [0] * len(jobs)
        for i, job in enumerate(jobs):  # fair shares: a small job takes all it has
            if room == 0:
                break
            grant[i] = min(job.left, max(1, room // (len(jobs) - i)))
            room -= grant[i]
        for i, job in enumerate(jobs):  # the room small jobs left
            if room == 0:
                break
            extra = min(job.left - grant[i], room)
            grant[i] += extra
            room -= extra
        pieces, served, waiting = [], [], []
        for job, n in zip(jobs, grant, strict=True):
            if n == 0:
                waiting.append(job)
                continue
            pieces.append(_Piece(job, job.done, job.done + n))
            job.done += n
            self._queued -= n
            if job.left:
                served.append(job)
        self._pending = collections.deque(waiting + served)
        return pieces

    async def _stragglers(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._wakeup is not None
        deadline = loop.time() + self.max_wait
        while len(self._pending) < self._expected and self._queued < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _fail(self, job: _Job, error: BaseException) -> None:
        self.stats.failed_jobs += 1
        if not job.future.done():
            job.future.set_exception(error)

    async def _compute(self, loop: asyncio.AbstractEventLoop, pieces: list[_Piece]) -> tuple[list[_Piece], Any, int]:
        """Run fn on the pieces: (the pieces that got results, their arrays, fn ns); failures
        delivered to their own jobs."""
        assert self._executor is not None
        items = [item for p in pieces for item in p.job.items[p.start : p.stop]]
        started = time.perf_counter_ns()
        self._busy_since = time.monotonic()
        try:
            arrays = await loop.run_in_executor(self._executor, self.fn, items)
            return pieces, arrays, time.perf_counter_ns() - started
        except ItemErrors as e:
            arrays, good, offset = e.arrays, [], 0
            for p in pieces:
                bad = sorted(i for i in e.errors if offset <= i < offset + p.stop - p.start)
                if bad:
                    self._fail(p.job, JobItemError(p.start + bad[0] - offset, e.errors[bad[0]]))
                else:
                    good.append(p)
                offset += p.stop - p.start
            keep = [i for p, o in _offsets(pieces) if p in good for i in range(o, o + p.stop - p.start)]
            return good, tuple(a[keep] for a in arrays), time.perf_counter_ns() - started
        except Exception as e:
            if len({id(p.job) for p in pieces}) == 1:
                for p in pieces:
                    self._fail(p.job, e)
                return [], (), time.perf_counter_ns() - started
        finally:
            self._busy_since = 0.0
        # A batch of several jobs failed: which job's items did it? Each job alone, once.
        self.stats.retried_batches += 1
        good, parts = [], []
        for p in pieces:
            if p.job.future.done():
                continue
            got, arrays, _ = await self._compute(loop, [p])
            if got:
                good.append(p)
                parts.append(arrays)
        joined = tuple(np.concatenate(a) for a in zip(*parts, strict=True)) if parts else ()
        return good, joined, time.perf_counter_ns() - started

    async def _run(self) -> None:
        assert self._wakeup is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._stragglers(loop)
            pieces = self._take()
            if not pieces:
                continue
            started = time.perf_counter_ns()
            for p in pieces:
                if p.start == 0:
                    p.job.started_ns = started
            try:
                good, arrays, took = await self._compute(loop, pieces)
            finally:
                self._expected = len(pieces) + len(self._pending)
            n = sum(p.stop - p.start for p in pieces)
            stats = self.stats
            stats.batches += 1
            stats.items += n
            stats.largest = max(stats.largest, n)
            stats.last_batch_ms = time.time_ns() // 1_000_000
            size = stats.by_size.setdefault(n, [0, 0])
            size[0] += 1
            size[1] += took
            if self.on_batch is not None:
                self.on_batch(len(pieces), n, took)
            for p, offset in _offsets(good):
                job = p.job
                job.parts.append(tuple(a[offset : offset + p.stop - p.start] for a in arrays))
                stats.compute_ns += took
                if p.stop == len(job.items) and not job.future.done():  # its last piece
                    parts = job.parts
                    job.future.set_result(
                        parts[0] if len(parts) == 1 else tuple(np.concatenate(a) for a in zip(*parts, strict=True))
                    )
                    stats.jobs += 1
                    stats.queue_ns += job.started_ns - job.queued_ns


def _offsets(pieces: list[_Piece]) -> list[tuple[_Piece, int]]:
    out, offset = [], 0
    for p in pieces:
        out.append((p, offset))
        offset += p.stop - p.start
    return out
