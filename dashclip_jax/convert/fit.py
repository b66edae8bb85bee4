"""Shape fitting: a source array against its target shape.

Three resizes are defined (each logged and noted); any other difference is a
shape mismatch:
  word embeddings    vocab grown (new rows ~ N(0, 0.02)) or cut;
  ViT pos_embed      bicubic interpolation to the target patch grid;
  text pos_embed     truncated to the target's max positions.
"""

from __future__ import annotations

import logging

import numpy as np

from dashclip_jax import model as model_lib
from dashclip_jax.convert.errors import ConversionError

log = logging.getLogger(__name__)


def fit_shape(path: tuple[str, ...], array: np.ndarray,
              shape: tuple[int, ...], notes: list[str],
              rng: np.random.Generator) -> np.ndarray:
  """Checks a source array against the target shape; resizes where defined."""
  array = np.asarray(array)
  if array.shape == tuple(shape):
    return array
  name = "/".join(path)
  if path[-2:] == ("word_embed", "embedding") and array.shape[1] == shape[1]:
    old = array.shape[0]
    if old < shape[0]:
      extra = rng.normal(0.0, 0.02, (shape[0] - old, shape[1]))
      array = np.concatenate([array, extra.astype(array.dtype)], 0)
    else:
      array = array[:shape[0]]
    _note(f"resized vocab of {name}: {old} -> {shape[0]} rows", notes)
    return array
  if path[-1] == "pos_embed" and path[0] == "img" and array.shape[-1] == \
      shape[-1]:
    side = int(round((shape[1] - 1) ** 0.5))
    resized = np.asarray(model_lib.interpolate_pos_embed(array, (side, side)))
    if resized.shape == tuple(shape):
      _note(f"interpolated {name} (bicubic): {array.shape[1] - 1} -> "
            f"{shape[1] - 1} patches", notes)
      return resized
  if path[-1] == "pos_embed" and path[0] in ("txt", "query") and \
      array.shape[1] == shape[1] and array.shape[0] > shape[0]:
    _note(f"truncated {name}: {array.shape[0]} -> {shape[0]} positions", notes)
    return array[:shape[0]]
  raise ConversionError(
      f"shape mismatch for {name}: source {tuple(array.shape)} vs target "
      f"{tuple(shape)}")


def _note(msg: str, notes: list[str]) -> None:
  log.info(msg)
  notes.append(msg)
