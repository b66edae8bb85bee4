"""The contrastive temperature: BLIP's range and its straight-through clamp."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

TEMP_MIN = 0.001
TEMP_MAX = 0.5


def clamp_temp(temp: Array) -> Array:
  """BLIP clamps `temp` to [0.001, 0.5] in place, *without* stopping its grad.

  We reproduce that with a straight-through clamp: the forward value is
  clamped, the gradient flows as if it were not (BLIP's optimiser sees the
  grad of the clamped value). The train step also clamps the parameter after
  each update, which is what BLIP's in-place clamp amounts to.
  """
  temp = jnp.asarray(temp, jnp.float32)
  return temp + jax.lax.stop_gradient(jnp.clip(temp, TEMP_MIN, TEMP_MAX) - temp)
