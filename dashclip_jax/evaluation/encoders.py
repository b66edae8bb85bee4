"""The models an evaluation ranks with: what they must do, and the one loop
that embeds a catalog's products with them (the evaluation, the paraphrase
evaluation and ranking's embedding exports share it)."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from dashclip_jax import inference


class Encoder(Protocol):
  """What the evaluation needs from a model (`dashclip_jax.load` gives it)."""

  def encode_product(self, images: Sequence[np.ndarray],
                     titles: Sequence[str]) -> np.ndarray: ...  # (B, E)

  def encode_query(self, texts: Sequence[str]) -> np.ndarray: ...  # (B, E)


def encode_products(model: Encoder, catalog, chunk: int = 256) -> np.ndarray:
  """float32 (N, E) multimodal product embeddings, decoding `chunk` at once."""
  out = []
  for s in range(0, len(catalog), chunk):
    idx = range(s, min(s + chunk, len(catalog)))
    images = [catalog.load_image(i) for i in idx]
    out.append(np.asarray(model.encode_product(
        images, [catalog.titles[i] for i in idx]), np.float32))
  return np.concatenate(out)


def load_model(path: str, batch_size: int, what: str) -> Encoder:
  """`dashclip_jax.load` of config.<what>, which must be set."""
  if not path:
    raise ValueError(f"config.{what} is empty: name a model dir or workdir")
  return inference.load(path, batch_size=batch_size)
