"""Dynamic batching: requests that arrive together become one engine call.

One loop takes the oldest waiting task, waits a short collection window for others to arrive, and
runs it with every waiting task of the same group (oldest first, up to `max_rows` rows) in one call
on a single worker thread, so the model runs one batch at a time while the event loop keeps
accepting requests. Under load the window hardly matters: requests queue while a batch runs and the
next batch takes them all. The queue is bounded (`QueueFull` when it holds `max_queue` tasks), and
a task whose caller stopped waiting (its time limit) is dropped before it runs.

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
    def __init__(self, run_group: Callable[[list[Any]], Sequence[Any]], max_rows: int = 32, window_s: float = 0.01,
                 max_queue: int = 256):
        if max_rows < 1 or max_queue < 1 or window_s < 0:
            raise ValueError("max_rows and max_queue must be >= 1 and window_s >= 0")
        self.run_group, self.max_rows, self.window_s, self.max_queue = run_group, max_rows, window_s, max_queue
        self.waiting: deque[Waiting] = deque()
        self.arrival = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ugen-engine")
        self.calls = 0  # engine calls so far (for /health and the load benchmark)

    async def submit(self, task: Batchable) -> tuple[Any, BatchInfo]:
        """The task's result once its batch has run, and how that batch was made up."""
        if len(self.waiting) >= self.max_queue:
            raise QueueFull(f"the server is busy: {len(self.waiting)} requests are waiting; retry later")
        entry = Waiting(task, asyncio.get_running_loop().create_future())
        self.waiting.append(entry)
        self.arrival.set()
        return await entry.future

    def _take_batch(self) -> list[Waiting]:
        """The oldest live task and every later one of its group that fits in `max_rows`."""
        while self.waiting and self.waiting[0].future.done():  # cancelled: its caller gave up
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
        loop = asyncio.get_running_loop()
        while True:
            if not self.waiting:
                self.arrival.clear()
                await self.arrival.wait()
                await asyncio.sleep(self.window_s)  # let requests that arrive together join
            batch = self._take_batch()
            if not batch:
                continue
            info = BatchInfo(len(batch), sum(e.task.rows for e in batch))
            try:
                results = await loop.run_in_executor(self.executor, self.run_group, [e.task for e in batch])
            except Exception as err:  # the whole call failed: each of its requests says why
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(err)
            else:
                for entry, result in zip(batch, results):
                    if not entry.future.done():
                        entry.future.set_result((result, info))
            self.calls += 1

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
