"""grain eval datasets: every product / query once, padded per process.

Each is a MapDataset of batches whose length is the same on every process
(`shards.eval_plan`: this process takes every count-th item); rows past the
end are padding with `valid == 0`, and ids travel with the rows, so metrics
do not depend on how items were spread. Products whose image does not
decode come back with valid=0 and are counted in `ds.bad`.

Batch formats are documented in `dashclip_jax/data/__init__.py`.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from dashclip_jax.data import bad_records as br
from dashclip_jax.data import batching
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import examples
from dashclip_jax.data import images as images_lib
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import shards
from dashclip_jax.model import preprocess


class _ProductEval:
  """Padded position -> {image, title_ids, title_mask, product_id, valid}."""

  def __init__(self, catalog, items, image_size, max_length, tokenizer, bad,
               text_prefix):
    self.catalog, self.items = catalog, items
    self.image_size = image_size
    self.text = examples.Text(tokenizer, max_length)
    self.bad = bad
    self.ids_key = text_prefix + "ids"
    self.mask_key = text_prefix + "mask"

  def __call__(self, pos: int) -> dict:
    s, l = self.image_size, self.text.max_length
    out = {"image": np.zeros((s, s, 3), np.float32),
           self.ids_key: np.zeros((l,), np.int32),
           self.mask_key: np.zeros((l,), np.int32),
           "product_id": np.int32(-1), "valid": np.int32(0)}
    if pos >= len(self.items):
      return out
    i = int(self.items[pos])
    out[self.ids_key], out[self.mask_key] = self.text(self.catalog.titles[i])
    out["product_id"] = np.int32(i)
    try:
      out["image"] = preprocess.eval_transform(self.catalog.load_image(i), s)
    except images_lib.ImageError as e:
      self.bad.bad(e.where, "bad image", e.reason)
      return out  # valid stays 0: the evaluator leaves this product out.
    self.bad.ok()
    out["valid"] = np.int32(1)
    return out


class _QueryEval:
  """Padded position -> {query_ids, query_mask, query_index, valid}."""

  def __init__(self, queries, items, max_length, tokenizer):
    self.queries, self.items = queries, items
    self.text = examples.Text(tokenizer, max_length)

  def __call__(self, pos: int) -> dict:
    l = self.text.max_length
    out = {"query_ids": np.zeros((l,), np.int32),
           "query_mask": np.zeros((l,), np.int32),
           "query_index": np.int32(-1), "valid": np.int32(0)}
    if pos < len(self.items):
      q = int(self.items[pos])
      out["query_ids"], out["query_mask"] = self.text(self.queries[q])
      out["query_index"] = np.int32(q)
      out["valid"] = np.int32(1)
    return out


def eval_products_dataset(catalog: catalog_lib.Catalog, *, batch_size: int,
                          image_size: int = 384, max_length: int = 35,
                          shard: Any = None, max_bad_fraction: float = 0.01,
                          tokenizer=None, text_prefix: str = "title_"
                          ) -> grain.MapDataset:
  """Every product once (this process: every count-th), eval transform.

  Returns a MapDataset of batches; `ds.bad` counts undecodable images (their
  rows come back with valid=0). Keys: image f32 (B,S,S,3), title_ids/
  title_mask i32 (B,L) (`ids`/`mask` with text_prefix="", the stage-1 batch
  names), product_id i32 (B,) (-1 on padding), valid i32 (B,).
  """
  items, length = shards.eval_plan(len(catalog), batch_size, shard)
  bad = br.BadRecords(f"eval products {catalog.name}",
                      max_bad_fraction=max_bad_fraction)
  fn = _ProductEval(catalog, items, image_size, max_length, tokenizer, bad,
                    text_prefix)
  ds = grain.MapDataset.range(length).map(fn).batch(batch_size,
                                                    batch_fn=batching.stack)
  ds.bad = bad
  return ds


def eval_queries_dataset(relevance: relevance_lib.Relevance, *,
                         batch_size: int, max_length: int = 35,
                         shard: Any = None, tokenizer=None
                         ) -> grain.MapDataset:
  """Every query once (this process: every count-th), padded like products.

  Keys: query_ids/query_mask i32 (B,L), query_index i32 (B,) (-1 on padding;
  index into `relevance.queries`, whose qrels are `relevance.qrels()`),
  valid i32 (B,).
  """
  items, length = shards.eval_plan(relevance.num_queries, batch_size, shard)
  fn = _QueryEval(relevance.queries, items, max_length, tokenizer)
  return grain.MapDataset.range(length).map(fn).batch(
      batch_size, batch_fn=batching.stack)
