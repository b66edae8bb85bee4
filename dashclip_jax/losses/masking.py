"""What every loss masks with: a finite stand-in for -inf, weighted means."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Large negative used instead of -inf for masked logits: keeps softmax and its
# gradient finite when a row happens to be fully masked.
NEG_INF = -1e9


def weighted_mean(x: Array, w: Array | None) -> Array:
  """mean(x) weighted by w (None: plain mean; all-zero w: 0, not NaN)."""
  if w is None:
    return jnp.mean(x)
  w = w.astype(jnp.float32)
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1e-12)
