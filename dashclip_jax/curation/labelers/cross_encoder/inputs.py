"""A teacher's inputs: (query, product) pairs -> token ids, mask [, pixels].

`[CLS] query [SEP] product text [SEP]`, the product text being the
configured catalog fields (`labeler.product_text`); a multimodal teacher
also gets the product image, eval-transformed and decoded once per image.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Sequence

import numpy as np

from dashclip_jax.curation.labelers import interface as labeler_lib
from dashclip_jax.curation.labelers.cross_encoder import config as teacher_config
from dashclip_jax.data import images as images_lib
from dashclip_jax.model import preprocess
from dashclip_jax.model import tokenizer as tok


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> tok.BlipTokenizer:
  return tok.BlipTokenizer.from_vocab()


def pair_tokens(tokenizer: tok.BlipTokenizer, queries: Sequence[str],
                texts: Sequence[str], max_length: int, query_max_length: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """[CLS] query [SEP] text [SEP] [PAD]... -> ids, mask int32 (B, L).

  The query keeps at most `query_max_length` tokens; the text fills the
  rest and is cut at the end (its final [SEP] kept).
  """
  if len(queries) != len(texts):
    raise ValueError(f"{len(queries)} queries but {len(texts)} products")
  clean = lambda ts: [tok.pre_caption(t) for t in ts]
  q_ids, q_mask = tokenizer(clean(queries), query_max_length)
  t_ids, t_mask = tokenizer(clean(texts), max_length)
  ids = np.zeros((len(queries), max_length), np.int32)
  mask = np.zeros_like(ids)
  for row in range(len(queries)):
    q = q_ids[row, :q_mask[row].sum()]
    t = t_ids[row, 1:t_mask[row].sum()]  # Without the second [CLS].
    room = max_length - len(q)
    if len(t) > room:
      t = np.concatenate([t[:room - 1], [tok.SEP_ID]])
    n = len(q) + len(t)
    ids[row, :n] = np.concatenate([q, t])
    mask[row, :n] = 1
  return ids, mask


def product_pixels(product: dict[str, Any], image_size: int) -> np.ndarray:
  """float32 (S, S, 3) eval-transformed product image; raises ImageError."""
  src, where = product["image"], product.get("where", product["product_id"])
  if isinstance(src, (bytes, bytearray, memoryview)):
    data = bytes(src)
  else:
    try:
      with open(src, "rb") as f:
        data = f.read()
    except OSError as e:
      raise images_lib.ImageError(where, f"cannot read image {src}: "
                                  f"{e.strerror or e}") from e
  return preprocess.eval_transform(images_lib.decode_image(data, where),
                                   image_size)


def encode_pairs(config: teacher_config.TeacherConfig,
                 tokenizer: tok.BlipTokenizer, queries: Sequence[str],
                 products: Sequence[dict[str, Any]]
                 ) -> tuple[dict[str, np.ndarray], list[str]]:
  """-> (model inputs, culprits of images that failed).

  A failed image (multimodal) is fed as the mean image (zeros after
  normalisation), so a pair is never dropped silently: it is named.
  """
  texts = [labeler_lib.product_text(p, config.fields) for p in products]
  ids, mask = pair_tokens(tokenizer, queries, texts, config.max_length,
                          config.query_max_length)
  out, failed = {"ids": ids, "mask": mask}, []
  if config.kind == "multimodal":
    s = config.vision.image_size
    images = np.zeros((len(products), s, s, 3), np.float32)
    for i, p in enumerate(products):
      try:
        images[i] = cached_pixels(p, s)
      except images_lib.ImageError as e:
        failed.append(str(e))
    out["images"] = images
  return out, failed


_PIXEL_CACHE: dict[tuple[str, int], np.ndarray] = {}


def cached_pixels(product: dict[str, Any], size: int) -> np.ndarray:
  """`product_pixels`, decoded once per image (products recur across
  pairs, one per query; multimodal teachers only, S*S*3 floats each)."""
  src = product["image"]
  key = (hashlib.sha1(bytes(src)).hexdigest() if isinstance(
      src, (bytes, bytearray, memoryview)) else str(src), size)
  if key not in _PIXEL_CACHE:
    _PIXEL_CACHE[key] = product_pixels(product, size)
  return _PIXEL_CACHE[key]
