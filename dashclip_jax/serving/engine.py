"""The model's towers behind dynamic batchers: what the embeddings server
computes.

Each tower (query, text, product) has its own `batching.Batcher`: rows of
concurrent requests are gathered into one call of the public encoder
(`DashClipEncoder.encode_query` / `encode_text` / `encode_product`) with
`batch_size` set to the batch's size bucket (1, 2, 4, ... max_batch), which
pads the batch to it. Texts are padded to the tokenizer's fixed length, so
each tower compiles at most len(buckets) shapes, and a served embedding is
the Python API's own for the same input.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence

import numpy as np

from dashclip_jax import inference
from dashclip_jax.serving import batching

TOWERS = ("query", "text", "product")


class EmbeddingEngine:
  """Batched embeddings from a loaded `DashClipEncoder`.

  observe(tower, rows) is called once per forward with its real row count
  (the app sets it to its batch-size metric).
  """

  def __init__(self, encoder: "inference.DashClipEncoder", *,
               max_batch: int = 64, wait_s: float = 0.005):
    self.encoder = encoder
    self.dim = encoder.config.embed_dim
    self.buckets = batching.batch_buckets(1, max_batch)
    self.observe: Callable[[str, int], None] = lambda tower, rows: None
    self.shapes: set[tuple[str, int]] = set()
    fns = {"query": encoder.encode_query, "text": encoder.encode_text,
           "product": lambda rows, **kw: encoder.encode_product(
               [image for image, _ in rows], [title for _, title in rows],
               **kw)}
    self.batchers = {
        tower: batching.Batcher(self._forward(tower, fn), self.buckets[-1],
                                wait_s, f"serve-{tower}")
        for tower, fn in fns.items()}

  def _forward(self, tower: str, fn: Callable[..., np.ndarray]
               ) -> Callable[[list[Any]], np.ndarray]:
    def run(rows: list[Any]) -> np.ndarray:
      size = batching.bucket(len(rows), self.buckets)
      self.shapes.add((tower, size))
      self.observe(tower, len(rows))
      return fn(rows, batch_size=size)
    return run

  def start(self) -> None:
    for b in self.batchers.values():
      b.start()

  async def stop(self) -> None:
    for b in self.batchers.values():
      await b.stop()

  async def embed(self, tower: str, rows: Sequence[Any]) -> np.ndarray:
    """float32 (len(rows), E): each row's embedding, batched with whatever
    else is waiting. Rows: str for query/text, (uint8 (H, W, 3), title) for
    product."""
    batcher = self.batchers[tower]
    out = await asyncio.gather(*(batcher.submit(r) for r in rows))
    return np.stack(out).astype(np.float32, copy=False) if out else (
        np.zeros((0, self.dim), np.float32))

  def stats(self) -> dict[str, Any]:
    return {"batch_buckets": list(self.buckets),
            "compiled_shapes": sorted(map(list, self.shapes)),
            **{tower: b.stats() for tower, b in self.batchers.items()}}
