"""Next-token scoring for the labeling server: bucketed jitted forwards.

`Engine.next_logprobs(rows)` scores token-id rows in one jitted forward:
rows are left-padded (every row's next token is the last column) to a
length bucket (powers of two from `min_length` up to `max_length`) and the
batch to a size bucket (the device count times powers of two, up to
`max_batch`; pad rows repeat the last real one), so at most
len(batch buckets) x len(length buckets) shapes are ever compiled. Params
are laid out by their logical axes on this process's mesh, the batch split
over its devices, as `GptLabeler` does.

The shared `serving.batching.Batcher(engine.next_logprobs,
engine.max_batch)` gathers concurrent requests' rows into these forwards:
each request awaits `submit(ids)` for each token it wants. There is no KV
cache: a request generating n tokens is n full forwards of its growing row,
each batched with whatever else is waiting then.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from dashclip_jax.curation.labelers.cross_encoder import model as teacher_lib
from dashclip_jax.curation.labelers.gpt import model as model_lib
from dashclip_jax.serving import batching
from dashclip_jax.train import sharding as shard_lib


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
    self.batch_sizes = batching.batch_buckets(devices, max_batch)
    self.lengths = batching.length_buckets(min_length, max_length)
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
    length = batching.bucket(max(map(len, rows)), self.lengths)
    batch = batching.bucket(len(rows), self.batch_sizes)
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
