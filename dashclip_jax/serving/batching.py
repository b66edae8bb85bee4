"""Dynamic batching for the servers: an asyncio batcher that gathers
concurrent requests' rows into one call of a batch function, and the shape
buckets that keep a jitted forward to a few compiled shapes.

`Batcher(run, max_batch).submit(row)` is awaited by each request for each
row it wants computed: the batcher takes the first waiting row, keeps
collecting for up to `wait_s` or until `max_batch` rows, and calls
`run(rows)` (-> one output per row) for all of them on its own thread, so
the event loop keeps accepting requests meanwhile. Shared by the labeling
server (`curation/serve`: a Llama's next-token log-probabilities) and the
embeddings server (`serving/engine`: the query, text and product towers).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as futures_lib
from typing import Any, Callable, Sequence


def bucket(n: int, sizes: Sequence[int]) -> int:
  """The smallest size >= n, else ValueError."""
  for size in sizes:
    if size >= n:
      return size
  raise ValueError(f"{n} exceeds the largest bucket {max(sizes)}")


def batch_buckets(devices: int, max_batch: int) -> tuple[int, ...]:
  """devices x 1, 2, 4, ... up to max_batch rounded up to the devices."""
  top = -(-max_batch // devices) * devices
  sizes, size = [], devices
  while size < top:
    sizes.append(size)
    size *= 2
  return tuple(sizes + [top])


def length_buckets(min_length: int, max_length: int) -> tuple[int, ...]:
  """min_length x 1, 2, 4, ... then max_length itself."""
  sizes, size = [], min_length
  while size < max_length:
    sizes.append(size)
    size *= 2
  return tuple(sizes + [max_length])


class Batcher:
  """Gathers concurrent `submit`s into `run(rows)` calls of <= max_batch."""

  def __init__(self, run: Callable[[list[Any]], Sequence[Any]],
               max_batch: int, wait_s: float = 0.005,
               thread_name: str = "serve-forward"):
    if max_batch < 1:
      raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    self.run, self.max_batch, self.wait_s = run, max_batch, wait_s
    self._queue: asyncio.Queue | None = None
    self._task: asyncio.Task | None = None
    # One thread: every batch runs on it, one at a time.
    self._thread = futures_lib.ThreadPoolExecutor(1, thread_name)
    self.batch_sizes: collections.Counter = collections.Counter()

  def start(self) -> None:
    self._queue = asyncio.Queue()
    self._task = asyncio.get_running_loop().create_task(self._run())

  async def stop(self) -> None:
    if self._task is not None:
      self._task.cancel()
      await asyncio.gather(self._task, return_exceptions=True)
    self._thread.shutdown(wait=False, cancel_futures=True)

  async def submit(self, row: Any) -> Any:
    """`run`'s output for `row`, computed in a batch with other rows."""
    if self._queue is None:
      raise RuntimeError("Batcher.start() was not called")
    future = asyncio.get_running_loop().create_future()
    await self._queue.put((row, future))
    return await future

  async def _gather(self) -> list[tuple[Any, asyncio.Future]]:
    batch = [await self._queue.get()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + self.wait_s
    while len(batch) < self.max_batch:
      if not self._queue.empty():
        batch.append(self._queue.get_nowait())
        continue
      left = deadline - loop.time()
      if left <= 0:
        break
      try:
        batch.append(await asyncio.wait_for(self._queue.get(), left))
      except asyncio.TimeoutError:
        break
    return batch

  async def _run(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      batch = [(row, f) for row, f in await self._gather() if not f.done()]
      if not batch:
        continue
      self.batch_sizes[len(batch)] += 1
      try:
        out = await loop.run_in_executor(
            self._thread, self.run, [row for row, _ in batch])
      except Exception as e:  # pylint: disable=broad-except
        for _, future in batch:
          if not future.done():
            future.set_exception(e)
        continue
      for (_, future), result in zip(batch, out):
        if not future.done():  # Its client may have gone.
          future.set_result(result)

  def stats(self) -> dict[str, Any]:
    return {"batch_sizes": {str(k): v for k, v in
                            sorted(self.batch_sizes.items())},
            "largest_batch": max(self.batch_sizes, default=0)}
