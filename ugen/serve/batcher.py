"""Dynamic batching: requests that arrive together become one engine call.

One loop takes the oldest waiting task, waits a short collection window for others to arrive, and
runs it with every waiting task of the same group (oldest first, up to `max_rows` rows) in one call
on a single worker thread, so the model runs one batch at a time while the event loop keeps
accepting requests. Under load the window hardly matters: requests queue while a batch runs and the
next batch takes them all. The queue is bounded (`QueueFull` when it holds `max_queue` tasks). A
task whose caller stopped waiting (its time limit, or a client that hung up) is dropped before it
runs, and a running call is told, through the `abandoned` check it is given, once nobody waits
for any of its tasks, so that it can stop early (`Engine.should_stop`).

Written here rather than taken from a library: the serving frameworks that batch (Ray Serve,
Triton, TorchServe) are whole servers with their own processes and deployment; ugen needs some
sixty lines inside its own FastAPI app.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Protocol, Sequence


class QueueFull(Exception):
    pass


class Batchable(Protocol):
    rows: int
    group: Hashable


@dataclass
class Waiting:
    task: Batchable
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


@dataclass
class BatchInfo:
    """What a caller learns about the engine call that served it."""
    requests: int  # tasks in the call, this one included
    rows: int


class Batcher:
    """`run_group(tasks, abandoned)` runs tasks of one group in one call and returns one result per
    task; `abandoned()` turns true once no caller waits for any of them."""

    def __init__(self, run_group: Callable[[list[Any], Callable[[], bool]], Sequence[Any]], max_rows: int = 32,
                 window_s: float = 0.01, max_queue: int = 256):
        if max_rows < 1 or max_queue < 1 or window_s < 0:
            raise ValueError("max_rows and max_queue must be >= 1 and window_s >= 0")
        self.run_group, self.max_rows, self.window_s, self.max_queue = run_group, max_rows, window_s, max_queue
        self.waiting: deque[Waiting] = deque()
        self.running: list[Waiting] = []  # the batch in the engine now
        self.arrival = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ugen-engine")
        self.alive = False  # run_forever is running (/health answers 503 while it is not)
        # For /health and the benchmarks: engine calls made, tasks dropped unrun because their
        # callers had gone, and calls (and the tasks in them) stopped early for the same reason.
        self.calls = self.dropped = self.abandoned_calls = self.abandoned_tasks = 0
        self.restarts = 0  # times run_forever died and was started again (its supervisor counts them)

    async def submit(self, task: Batchable) -> tuple[Any, BatchInfo]:
        """The task's result once its batch has run, and how that batch was made up."""
        if len(self.waiting) >= self.max_queue:
            raise QueueFull(f"the server is busy: {len(self.waiting)} requests are waiting; retry later")
        entry = Waiting(task, asyncio.get_running_loop().create_future())
        entry.future.add_done_callback(lambda future: self._left(entry))
        self.waiting.append(entry)
        self.arrival.set()
        return await entry.future

    def _left(self, entry: Waiting) -> None:
        """A caller that gave up (time limit, hang-up) before its task ran: out of the queue now."""
        if entry.future.cancelled() and entry in self.waiting:
            self.waiting.remove(entry)
            self.dropped += 1

    @property
    def abandoned_rows(self) -> int:
        """Rows of the running call when none of its callers waits any more (it stops at its next step)."""
        return sum(e.task.rows for e in self.running) if self.running and all(e.future.done() for e in self.running) else 0

    def _take_batch(self) -> list[Waiting]:
        """The oldest live task and every later one of its group that fits in `max_rows`."""
        while self.waiting and self.waiting[0].future.done():  # answered already (a failure told it)
            self.waiting.popleft()
        if not self.waiting:
            return []
        group = self.waiting[0].task.group
        batch, rows, rest = [], 0, deque()
        for entry in self.waiting:
            fits = not batch or rows + entry.task.rows <= self.max_rows
            if entry.future.done():
                continue
            if entry.task.group == group and fits:
                batch.append(entry)
                rows += entry.task.rows
            else:
                rest.append(entry)
        self.waiting = rest
        return batch

    async def run_forever(self) -> None:
        """Run batches until cancelled. If it raises instead (a fault of its own, not of a batch,
        which its callers are told of), `fail_running` tells the callers of the batch it held."""
        loop = asyncio.get_running_loop()
        self.alive = True
        try:
            while True:
                if not self.waiting:
                    self.arrival.clear()
                    await self.arrival.wait()
                    await asyncio.sleep(self.window_s)  # let requests that arrive together join
                batch = self.running = self._take_batch()
                if not batch:
                    continue
                info = BatchInfo(len(batch), sum(e.task.rows for e in batch))
                # Read from the engine's thread: a future's done() is a plain attribute read.
                abandoned = lambda batch=batch: all(e.future.done() for e in batch)  # noqa: E731
                try:
                    results = await loop.run_in_executor(self.executor, self.run_group, [e.task for e in batch], abandoned)
                except Exception as err:  # the whole call failed (or stopped: nobody is told): each caller says why
                    if abandoned():
                        self.abandoned_calls += 1
                        self.abandoned_tasks += len(batch)
                    for entry in batch:
                        if not entry.future.done():
                            entry.future.set_exception(err)
                else:
                    for entry, result in zip(batch, results):
                        if not entry.future.done():
                            entry.future.set_result((result, info))
                self.running = []
                self.calls += 1
        finally:
            self.alive = False

    def fail_running(self, err: BaseException) -> None:
        """Tell the callers of the batch a dead `run_forever` held that it will not be answered."""
        for entry in self.running:
            if not entry.future.done():
                entry.future.set_exception(err)
        self.running = []

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
