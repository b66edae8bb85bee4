"""Which records each process reads: train shards and padded eval strides.

A shard is (index, count): `resolve_shard` reads it from None (= this JAX
process), a grain ShardOptions or a pair. Training splits the records into
`count` contiguous equal ranges (`shard_range`, remainder dropped, so every
process runs the same steps per epoch); evaluation strides over every record
and pads to one length on all processes (`eval_plan`), so none is left out.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np


def resolve_shard(shard: Any = None) -> tuple[int, int]:
  """(shard_index, shard_count) from None (= this JAX process), a grain
  ShardOptions, or an (index, count) pair."""
  if shard is None:
    return jax.process_index(), jax.process_count()
  if hasattr(shard, "shard_index"):
    return int(shard.shard_index), int(shard.shard_count)
  index, count = shard
  if not 0 <= index < count:
    raise ValueError(f"shard index {index} not in [0, {count})")
  return int(index), int(count)


def shard_range(n: int, index: int, count: int) -> tuple[int, int]:
  """Contiguous [start, stop) of shard `index`; every shard gets n // count
  records so all processes run the same number of steps per epoch (the
  n % count last records are left out of training)."""
  per = n // count
  if per == 0:
    raise ValueError(f"{n} records cannot be split over {count} shards")
  return index * per, (index + 1) * per


def eval_plan(n: int, batch_size: int, shard: Any) -> tuple[np.ndarray, int]:
  """Items of this process (strided) and the padded length (same on all)."""
  index, count = resolve_shard(shard)
  items = np.arange(index, n, count)
  per_process = math.ceil(n / count)
  return items, math.ceil(per_process / batch_size) * batch_size
