"""Which pairs to label: candidates for unlabelled queries, and the
queries nearest each product that may serve as its mined negatives.

Both come from the current embedding model's exact KNN
(`evaluation.knn.exact_topk`, sharded over this process's devices):
  * candidates: per unlabelled query its top-k products (the hard cases)
    plus `num_random` random products (so the easy 0s are represented),
    deduplicated against the labelled pairs and each other;
  * negatives: per anchor product (one stage 2 trains on) its top-k
    queries; the teacher then keeps those it labels 0.
The embedding model is a dashclip model directory (`mining.model`: query
tower against the multimodal product embedding) or, when none is named,
the teacher's starting text encoder (MiniLM-L6: mean-pooled sentence
embeddings of the query and of the product text), the untrained start.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import jax
import numpy as np

from dashclip_jax import model as model_lib
from dashclip_jax import tokenizer as tok
from dashclip_jax.curation import labeler as labeler_lib
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import images as images_lib
from dashclip_jax.evaluation import knn

log = logging.getLogger("dashclip_jax")


class TextEmbedder:
  """Masked-mean, L2-normalised states of a BERT text encoder (MiniLM's
  sentence embedding), for queries and product texts alike."""

  def __init__(self, text_config: model_lib.TextConfig, params: Any,
               fields: Sequence[str], *, max_length: int = 32,
               batch_size: int = 128):
    self.fields, self.max_length, self.batch_size = (tuple(fields),
                                                     max_length, batch_size)
    self.tokenizer = tok.BlipTokenizer.from_vocab()
    config = model_lib.TextConfig(**{**text_config.__dict__,
                                     "cross_attention": False})
    encoder = model_lib.TextEncoder(config)

    def embed(p, ids, mask):
      hidden = encoder.apply({"params": p}, ids, mask)
      return model_lib.l2_normalize(model_lib.masked_mean(hidden, mask))
    self._params = jax.device_put(_without_cross_attention(params))
    self._embed = jax.jit(embed)

  def _run(self, texts: Sequence[str]) -> np.ndarray:
    out, b = [], self.batch_size
    for s in range(0, len(texts), b):
      chunk = [tok.pre_caption(t) for t in texts[s:s + b]]
      real = len(chunk)
      chunk += [chunk[-1]] * (b - real)  # One shape: one compile.
      ids, mask = self.tokenizer(chunk, self.max_length)
      out.append(np.asarray(self._embed(self._params, ids, mask))[:real])
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

  def queries(self, texts: Sequence[str]) -> np.ndarray:
    return self._run(texts)

  def products(self, catalog: catalog_lib.Catalog) -> np.ndarray:
    return self._run([labeler_lib.product_text(
        labeler_lib.product_record(catalog, i), self.fields)
                      for i in range(len(catalog))])


def _without_cross_attention(tree: dict) -> dict:
  return {k: _without_cross_attention(v) if isinstance(v, dict) else v
          for k, v in tree.items() if not k.startswith("cross_attn")}


class ModelEmbedder:
  """A dashclip model directory: the query tower against the multimodal
  product embedding (a product whose image fails: its title alone)."""

  def __init__(self, model_dir: str, batch_size: int = 64):
    import dashclip_jax  # pylint: disable=g-import-not-at-top
    self.model = dashclip_jax.load(model_dir, batch_size=batch_size)

  def queries(self, texts: Sequence[str]) -> np.ndarray:
    return self.model.encode_query(list(texts))

  def products(self, catalog: catalog_lib.Catalog,
               chunk: int = 1024) -> np.ndarray:
    out = np.zeros((len(catalog), self.model.config.embed_dim), np.float32)
    failed = []
    for start in range(0, len(catalog), chunk):  # Bounded image memory.
      images, ok = [], []
      for i in range(start, min(start + chunk, len(catalog))):
        try:
          images.append(catalog.load_image(i))
          ok.append(i)
        except images_lib.ImageError as e:
          failed.append(i)
          if len(failed) <= 3:
            log.warning("mining: %s; its title alone is embedded", e)
      if ok:
        out[ok] = self.model.encode_product(
            images, [catalog.titles[i] for i in ok])
    if failed:
      out[failed] = self.model.encode_product_text(
          [catalog.titles[i] for i in failed])
      log.warning("mining: %d products embedded without their image",
                  len(failed))
    return out


def candidates(query_emb: np.ndarray, product_emb: np.ndarray, *, k: int,
               num_random: int, seed: int,
               labelled: set[tuple[int, int]]) -> dict[str, np.ndarray]:
  """-> {"query", "product" int64 (M,), "source" ("knn"|"random")}.

  Per query (in order): its top-k products by inner product, then
  `num_random` products drawn uniformly from the rest, none of them a
  labelled (query, product) pair nor repeated.
  """
  n = len(product_emb)
  k = min(k, n)
  top = (knn.exact_topk(query_emb, product_emb, k)[1] if k and len(query_emb)
         else np.zeros((len(query_emb), 0), np.int64))
  qs, ps, src = [], [], []
  for q in range(len(query_emb)):
    chosen = [int(p) for p in top[q] if (q, int(p)) not in labelled]
    num_knn = len(chosen)
    if num_random:
      rng, taken = np.random.default_rng([seed, q]), set(chosen)
      for p in rng.permutation(n).tolist():
        if len(chosen) - num_knn == num_random:
          break
        if p not in taken and (q, p) not in labelled:
          chosen.append(p)
          taken.add(p)
    qs += [q] * len(chosen)
    ps += chosen
    src += ["knn"] * num_knn + ["random"] * (len(chosen) - num_knn)
  return {"query": np.asarray(qs, np.int64),
          "product": np.asarray(ps, np.int64), "source": np.asarray(src)}


def nearest_queries(product_emb: np.ndarray, query_emb: np.ndarray,
                    anchors: np.ndarray, k: int,
                    exclude: set[tuple[int, int]]) -> dict[str, np.ndarray]:
  """-> {"query", "product"}: per anchor product its k nearest queries,
  minus the pairs in `exclude` (already labelled or already candidates)."""
  k = min(k, len(query_emb))
  if not len(anchors) or not k:
    return {"query": np.zeros(0, np.int64), "product": np.zeros(0, np.int64)}
  top = knn.exact_topk(product_emb[anchors], query_emb, k)[1]
  qs, ps = [], []
  for p, row in zip(anchors, top):
    for q in row:
      if (int(q), int(p)) not in exclude:
        qs.append(int(q))
        ps.append(int(p))
  return {"query": np.asarray(qs, np.int64),
          "product": np.asarray(ps, np.int64)}
