"""Next-token scoring for the server: bucketed jitted forwards, and an
asyncio batcher that gathers concurrent requests into one of them.

`Engine.next_logprobs(rows)` scores token-id rows in one jitted forward:
rows are left-padded (every row's next token is the last column) to a
length bucket (powers of two from `min_length` up to `max_length`) and the
batch to a size bucket (the device count times powers of two, up to
`max_batch`; pad rows repeat the last real one), so at most
len(batch buckets) x len(length buckets) shapes are ever compiled. Params
are laid out by their logical axes on this process's mesh, the batch split
over its devices, as `GptLabeler` does.

`Batcher.submit(ids)` is awaited by each request for each token it wants:
the batcher takes the first waiting row, keeps collecting for up to
`wait_s` or until `max_batch` rows, and runs one forward for all of them on
its own thread (the event loop keeps accepting requests meanwhile). There
is no KV cache: a request generating n tokens is n full forwards of its
growing row, each batched with whatever else is waiting then.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as futures_lib
from typing import Any, Sequence

import jax
import numpy as np

from dashclip_jax import sharding as shard_lib
from dashclip_jax.curation import teacher as teacher_lib
from dashclip_jax.curation.gpt import model as model_lib


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


class Engine:
  """A Llama's next-token log-probabilities, on a bounded set of shapes."""

  def __init__(self, config: model_lib.LlamaConfig, params: Any,
               pad_id: int, *, max_batch: int = 16, max_length: int = 512,
               min_length: int = 16, mesh: jax.sharding.Mesh | None = None):
    if max_batch < 1 or max_length < 1 or min_length < 1:
      raise ValueError(f"max_batch ({max_batch}), max_length ({max_length}) "
                       f"and min_length ({min_length}) must be >= 1")
    min_length = min(min_length, max_length)
    self.config, self.pad_id = config, pad_id
    self.mesh = mesh or teacher_lib.local_mesh()
    devices = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    self.batch_sizes = batch_buckets(devices, max_batch)
    self.lengths = length_buckets(min_length, max_length)
    self.max_length = max_length
    self.params = jax.device_put(params, shard_lib.param_shardings(
        model_lib.abstract_boxed(config), self.mesh))
    module = model_lib.Llama(config)
    self._forward = jax.jit(
        lambda p, ids, mask: jax.nn.log_softmax(module.apply(
            {"params": p}, ids, mask, method=model_lib.Llama.next_token)),
        out_shardings=shard_lib.replicated(self.mesh))
    self._sharding = shard_lib.batch_sharding(self.mesh, 2)
    self.calls = self.rows = self.padded_rows = 0
    self.shapes: set[tuple[int, int]] = set()

  @property
  def max_batch(self) -> int:
    return self.batch_sizes[-1]

  def padded(self, rows: Sequence[Sequence[int]]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded int32 (ids, mask) of bucketed shape."""
    if not rows or any(not r for r in rows):
      raise ValueError("every row needs at least one token")
    length = bucket(max(map(len, rows)), self.lengths)
    batch = bucket(len(rows), self.batch_sizes)
    ids = np.full((batch, length), self.pad_id, np.int32)
    mask = np.zeros((batch, length), np.int32)
    for i in range(batch):
      r = rows[min(i, len(rows) - 1)]  # Pad rows repeat the last one.
      ids[i, length - len(r):], mask[i, length - len(r):] = r, 1
    return ids, mask

  def next_logprobs(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
    """float32 (len(rows), V): each row's next-token log-probabilities;
    at most max_batch rows of at most max_length tokens."""
    ids, mask = self.padded(rows)
    self.calls += 1
    self.rows += len(rows)
    self.padded_rows += len(ids) - len(rows)
    self.shapes.add(ids.shape)
    out = self._forward(self.params, jax.device_put(ids, self._sharding),
                        jax.device_put(mask, self._sharding))
    return np.asarray(out, np.float32)[:len(rows)]

  def stats(self) -> dict[str, Any]:
    return {"forward_calls": self.calls, "forward_rows": self.rows,
            "padded_rows": self.padded_rows,
            "compiled_shapes": sorted(map(list, self.shapes)),
            "batch_buckets": list(self.batch_sizes),
            "length_buckets": list(self.lengths)}


class Batcher:
  """Gathers concurrent `submit`s into `Engine.next_logprobs` calls."""

  def __init__(self, engine: Engine, wait_s: float = 0.005):
    self.engine, self.wait_s = engine, wait_s
    self._queue: asyncio.Queue | None = None
    self._task: asyncio.Task | None = None
    # One thread: every forward runs on it, one at a time.
    self._thread = futures_lib.ThreadPoolExecutor(1, "serve-forward")
    self.batch_sizes: collections.Counter = collections.Counter()

  def start(self) -> None:
    self._queue = asyncio.Queue()
    self._task = asyncio.get_running_loop().create_task(self._run())

  async def stop(self) -> None:
    if self._task is not None:
      self._task.cancel()
      await asyncio.gather(self._task, return_exceptions=True)
    self._thread.shutdown(wait=False, cancel_futures=True)

  async def submit(self, ids: Sequence[int]) -> np.ndarray:
    """float32 (V,) log-probabilities of the token after `ids`."""
    if self._queue is None:
      raise RuntimeError("Batcher.start() was not called")
    future = asyncio.get_running_loop().create_future()
    await self._queue.put((list(ids), future))
    return await future

  async def _gather(self) -> list[tuple[list[int], asyncio.Future]]:
    batch = [await self._queue.get()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + self.wait_s
    while len(batch) < self.engine.max_batch:
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
      batch = [(ids, f) for ids, f in await self._gather() if not f.done()]
      if not batch:
        continue
      self.batch_sizes[len(batch)] += 1
      try:
        out = await loop.run_in_executor(
            self._thread, self.engine.next_logprobs, [ids for ids, _ in batch])
      except Exception as e:  # pylint: disable=broad-except
        for _, future in batch:
          if not future.done():
            future.set_exception(e)
        continue
      for (_, future), row in zip(batch, out):
        if not future.done():  # Its client may have gone.
          future.set_result(row)

  def stats(self) -> dict[str, Any]:
    return {**self.engine.stats(),
            "batch_sizes": {str(k): v for k, v in
                            sorted(self.batch_sizes.items())},
            "largest_batch": max(self.batch_sizes, default=0)}
