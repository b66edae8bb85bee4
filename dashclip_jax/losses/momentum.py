"""BLIP's momentum encoders and feature queues (stage 1 distillation): EMA
of the online params, ring-buffer queues written in global batch order."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def init_queue(rng: Array, size: int, dim: int) -> dict[str, Array]:
  """Fresh feature queues: random unit rows (as BLIP), ids -1, pointer 0.

  Returns {"img": (Q, E), "txt": (Q, E), "ids": (Q,) int32, "ptr": () int32}.
  """
  k1, k2 = jax.random.split(rng)
  def unit(k):
    x = jax.random.normal(k, (size, dim), jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  return {"img": unit(k1), "txt": unit(k2),
          "ids": jnp.full((size,), -1, jnp.int32),
          "ptr": jnp.zeros((), jnp.int32)}


def enqueue(queue: Array, ptr: Array, new: Array,
            valid: Array | None = None) -> tuple[Array, Array]:
  """Writes the global batch `new` into a ring buffer, in batch order.

  Rows of `new` go to rows ptr, ptr+1, ... (mod Q) of `queue`, i.e. the
  global batch in its order whatever the mesh (the input is a global array).
  Ragged final batch: rows with valid=False are skipped (not written) and the
  pointer advances by the number of *real* rows, wrapping around; the valid
  rows must be a prefix-free subset, any order is fine, they are packed in
  batch order. Unlike BLIP we do not require Q % B == 0, only B <= Q.

  Args:
    queue: (Q, ...) ring buffer.
    ptr: () int32 next row to write.
    new: (B, ...) rows to enqueue, same trailing shape and dtype-castable.
    valid: optional (B,) bool.

  Returns:
    (new_queue, new_ptr).
  """
  q, b = queue.shape[0], new.shape[0]
  if b > q:
    raise ValueError(f"enqueue: batch {b} larger than queue {q}.")
  if new.shape[1:] != queue.shape[1:]:
    raise ValueError(f"enqueue: rows {new.shape} do not fit queue {queue.shape}.")
  valid = jnp.ones((b,), bool) if valid is None else valid.astype(bool)
  offs = jnp.cumsum(valid.astype(jnp.int32)) - 1
  idx = jnp.where(valid, (ptr + offs) % q, q)  # q = out of range -> dropped
  queue = queue.at[idx].set(jax.lax.stop_gradient(new).astype(queue.dtype),
                            mode="drop")
  count = jnp.sum(valid.astype(jnp.int32))
  return queue, ((ptr + count) % q).astype(ptr.dtype)


def ema_update(params_m: Any, params: Any, momentum: float = 0.995) -> Any:
  """theta_m <- m * theta_m + (1 - m) * theta, leaf by leaf (no grad)."""
  return jax.tree.map(
      lambda pm, p: (momentum * pm + (1.0 - momentum)
                     * jax.lax.stop_gradient(p).astype(pm.dtype)),
      params_m, params)
