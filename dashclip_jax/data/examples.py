"""Per-example transforms of the train pipelines: one record -> one example.

`Stage1Example` turns a catalog row into {image, ids, mask, product_id,
category}; `Stage2Example` turns a positive (query, product) pair into the
query, the product (image + title), mined negative queries and the query's
relevant products. Both are grain RandomMaps (picklable: they run in worker
processes) whose rng comes from the pipeline (`train_datasets.py`), and
both return a bad-record marker (`batching.BAD_KEY`) instead of raising when
an image cannot be decoded. Images leave here as uint8; `batching.py`
normalises whole batches.
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

from dashclip_jax.data import augment as augment_lib
from dashclip_jax.data import batching
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import images as images_lib
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.model import preprocess
from dashclip_jax.data import query_rewrite
from dashclip_jax.model import tokenizer as tokenizer_lib


class Text:
  """pre_caption + fixed-length BLIP tokenisation of one string."""

  def __init__(self, tokenizer, max_length: int):
    self.tokenizer = tokenizer or tokenizer_lib.BlipTokenizer.from_vocab()
    self.max_length = max_length

  def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = self.tokenizer([tokenizer_lib.pre_caption(text)],
                               self.max_length)
    return ids[0], mask[0]


def _bad(e: images_lib.ImageError) -> dict:
  return {batching.BAD_KEY: e.reason, batching.BAD_WHERE_KEY: e.where}


def _train_pixels(catalog, i, rng, image_size, min_scale, augment):
  """Product i's image -> uint8 (S, S, 3) (may raise ImageError).

  Normalisation to float32 happens per batch in the main process: worker
  processes then ship uint8, 4x less inter-process traffic.
  """
  image = catalog.load_image(i)
  if augment:
    return augment_lib.train_augment(image, image_size, rng,
                                     min_scale=min_scale)
  return preprocess.resize_square(image, image_size)


class Stage1Example(grain.transforms.RandomMap):
  """Catalog row -> {image, ids, mask, product_id, category}."""

  def __init__(self, catalog: catalog_lib.Catalog, *, image_size: int,
               max_length: int, min_scale: float, augment: bool = True,
               tokenizer=None):
    self.catalog = catalog
    self.image_size = image_size
    self.min_scale = min_scale
    self.augment = augment
    self.text = Text(tokenizer, max_length)

  def random_map(self, index: int, rng: np.random.Generator) -> dict:
    try:
      image = _train_pixels(self.catalog, index, rng, self.image_size,
                            self.min_scale, self.augment)
    except images_lib.ImageError as e:
      return _bad(e)
    ids, mask = self.text(self.catalog.titles[index])
    return {"image": image, "ids": ids, "mask": mask,
            "product_id": np.int32(index),
            "category": np.int32(self.catalog.category[index])}


class Stage2Example(grain.transforms.RandomMap):
  """Positive pair -> query, product (image + title), negatives, masks."""

  def __init__(self, catalog: catalog_lib.Catalog,
               queries: Sequence[str], pairs: relevance_lib.Pairs,
               neg_queries: list[np.ndarray],
               relevant: np.ndarray, *, image_size: int,
               query_length: int, title_length: int, min_scale: float,
               num_negatives: int, augment: bool = True, tokenizer=None,
               product_ok: np.ndarray | None = None,
               query_rewrite_rate: float = 0.0):
    self.catalog = catalog
    # product_ok (bool per product) given: images are not read (the trainer
    # feeds cached product features), and pairs of products whose image
    # failed when the table was built are skipped and counted.
    self.product_ok = product_ok
    self.queries = list(queries)
    self.pairs = pairs
    self.neg_queries = neg_queries
    self.relevant = relevant
    self.image_size, self.min_scale = image_size, min_scale
    self.num_negatives = num_negatives
    self.augment = augment
    self.query_rewrite_rate = query_rewrite_rate
    tok = tokenizer or tokenizer_lib.BlipTokenizer.from_vocab()
    self.query_text = Text(tok, query_length)
    self.title_text = Text(tok, title_length)

  def random_map(self, index: int, rng: np.random.Generator) -> dict:
    q, p = int(self.pairs.query[index]), int(self.pairs.product[index])
    if self.product_ok is not None:
      if not self.product_ok[p]:
        return {batching.BAD_KEY: "image failed in the product table",
                batching.BAD_WHERE_KEY: self.catalog.culprit(p)}
      image = None
    else:
      try:
        image = _train_pixels(self.catalog, p, rng, self.image_size,
                              self.min_scale, self.augment)
      except images_lib.ImageError as e:
        return _bad(e)
    query = self.queries[q]
    if self.query_rewrite_rate:  # Draws from rng only when on.
      query = query_rewrite.substitute(query, query_rewrite.SYNONYMS, rng,
                                       self.query_rewrite_rate)
    query_ids, query_mask = self.query_text(query)
    title_ids, title_mask = self.title_text(self.catalog.titles[p])
    n, lq = self.num_negatives, self.query_text.max_length
    neg_ids = np.zeros((n, lq), np.int32)
    neg_mask = np.zeros((n, lq), np.int32)
    neg_index = np.full((n,), -1, np.int32)
    candidates = self.neg_queries[p]
    if n and len(candidates):
      chosen = rng.choice(candidates, size=min(n, len(candidates)),
                          replace=False)
      for k, nq in enumerate(chosen):
        neg_ids[k], neg_mask[k] = self.query_text(self.queries[int(nq)])
        neg_index[k] = nq
    out = {
        "query_ids": query_ids, "query_mask": query_mask,
        "image": image, "title_ids": title_ids, "title_mask": title_mask,
        "product_id": np.int32(p), "query_index": np.int32(q),
        "label": np.int32(self.pairs.label[index]),
        "label_weight": np.float32(self.pairs.weight[index]),
        "neg_query_ids": neg_ids, "neg_query_mask": neg_mask,
        "neg_query_index": neg_index, "neg_valid": neg_index >= 0,
        "relevant_product_ids": self.relevant[q],
    }
    if image is None:
      del out["image"]
    return out
