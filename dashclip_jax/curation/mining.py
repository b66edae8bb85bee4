"""Which pairs to label: candidates for unlabelled queries, and the
queries nearest each product that may serve as its mined negatives.

Both come from the current embedding model's exact KNN
(`evaluation.knn.exact_topk`, sharded over this process's devices; the
candidates' may come from a faiss index instead, `mining.search`):
  * candidates: per unlabelled query its top-k products (the hard cases)
    plus `num_random` random products (so the easy 0s are represented),
    deduplicated against the labelled pairs and each other. The random
    ones come from each query's own counter-based stream of draws, all
    queries of a batch at once: no per-query permutation of the catalog,
    no per-candidate Python, the same draws however queries are batched;
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

from dashclip_jax import index as index_lib
from dashclip_jax import inference
from dashclip_jax import model as model_lib
from dashclip_jax.curation.labelers import interface as labeler_lib
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import images as images_lib
from dashclip_jax.evaluation import knn
from dashclip_jax.model import tokenizer as tok

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
    self.model = inference.load(model_dir, batch_size=batch_size)

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


# Draws per query and round of the random sampler: enough that a round
# almost never leaves a query short (a draw is rejected only when it hits
# the query's top-k, a labelled pair or an earlier draw).
_OVERSAMPLE, _EXTRA, _MAX_ROUNDS = 2, 8, 4
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
SEARCHES = ("exact", "faiss")


def pair_keys(query: np.ndarray, product: np.ndarray,
              num_products: int) -> np.ndarray:
  """int64 keys query * num_products + product: a pair as one sortable
  number (np.isin / np.searchsorted instead of a set of tuples)."""
  return (np.asarray(query, np.int64) * num_products +
          np.asarray(product, np.int64))


def _mix(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser: a bijection of uint64 whose outputs look
  independent for consecutive inputs."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def uniform_draws(seed: int, query_index: np.ndarray, start: int,
                  count: int, n: int) -> np.ndarray:
  """int64 (B, count): draws start .. start+count-1 of each query's own
  stream of uniform integers in [0, n).

  Counter-based (SplitMix64 keyed by (seed, query index), counted by draw
  number): a query's draws do not depend on which other queries share its
  batch, how many there are, or on numpy's generator implementations.
  """
  with np.errstate(over="ignore"):
    key = _mix(np.uint64(seed) * _GOLDEN + np.uint64(1))
    row = _mix(key ^ (np.asarray(query_index).astype(np.uint64) * _GOLDEN))
    step = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    x = _mix(row[:, None] + step[None, :] * _GOLDEN)
  return (x % np.uint64(n)).astype(np.int64)  # Bias ~ n / 2**64.


def _in_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
  """bool, keys' shape: which keys occur in the sorted int64 array."""
  if not len(sorted_keys):
    return np.zeros(keys.shape, bool)
  pos = np.searchsorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)
  return sorted_keys[pos] == keys


def _first_occurrence(draws: np.ndarray) -> np.ndarray:
  """bool (B, C): draws[b, c] is not an earlier draw of row b."""
  order = np.argsort(draws, axis=1, kind="stable")
  s = np.take_along_axis(draws, order, axis=1)
  repeat = np.zeros(draws.shape, bool)
  repeat[:, 1:] = s[:, 1:] == s[:, :-1]  # Stable: the first stays False.
  first = np.empty_like(repeat)
  np.put_along_axis(first, order, ~repeat, axis=1)
  return first


def _take_first(values: np.ndarray, keep: np.ndarray, count: int
                ) -> np.ndarray:
  """int64 (B, count): per row the first `count` values where keep, in
  column order; -1 pads a row with fewer."""
  rank = np.cumsum(keep, axis=1) - 1
  keep = keep & (rank < count)
  out = np.full((len(values), count), -1, np.int64)
  rows, cols = np.nonzero(keep)
  out[rows, rank[rows, cols]] = values[rows, cols]
  return out


def random_products(top: np.ndarray, query_index: np.ndarray, n: int,
                    num_random: int, seed: int, labelled_keys: np.ndarray
                    ) -> np.ndarray:
  """int64 (B, num_random): per query `num_random` distinct products drawn
  uniformly from those not in its top-k `top` int (B, k) and not labelled
  with it (`labelled_keys`: sorted pair_keys); -1 pads a query whose rest
  is smaller.

  Each query takes the first valid draws of its own stream
  (`uniform_draws`), so the result is a function of (seed, query index,
  its top-k, its labelled pairs) alone. The rare query still short after
  a few rounds of draws (a tiny catalog) is filled from a seeded
  permutation of its exact rest.
  """
  out = np.full((len(top), num_random), -1, np.int64)
  if not num_random or not len(top):
    return out
  per_round = _OVERSAMPLE * num_random + _EXTRA
  active = np.arange(len(top))
  draws = np.zeros((len(top), 0), np.int64)
  for r in range(_MAX_ROUNDS):
    g = query_index[active]
    draws = np.concatenate([draws, uniform_draws(
        seed, g, r * per_round, per_round, n)], axis=1)
    valid = ~(draws[:, :, None] == top[active, None, :]).any(-1)
    valid &= ~_in_sorted(pair_keys(g[:, None], draws, n), labelled_keys)
    valid &= _first_occurrence(draws)
    out[active] = _take_first(draws, valid, num_random)
    short = (out[active] < 0).any(1)
    active, draws = active[short], draws[short]
    if not len(active):
      return out
  for b in active.tolist():  # Per short query only (tiny catalogs).
    taken = out[b][out[b] >= 0]
    g = int(query_index[b])
    lo, hi = np.searchsorted(labelled_keys, [g * n, (g + 1) * n])
    rest = np.setdiff1d(np.arange(n), np.concatenate(
        [top[b], taken, labelled_keys[lo:hi] - g * n]))
    fill = np.random.default_rng([seed, g]).permutation(rest)
    fill = fill[:num_random - len(taken)]
    out[b, len(taken):len(taken) + len(fill)] = fill
  return out


def topk(query_emb: np.ndarray, product_emb: np.ndarray, k: int,
         search: str = "exact", faiss_index: str = "hnsw") -> np.ndarray:
  """int64 (Q, k): per query its k best products by inner product, best
  first; "exact" (`knn.exact_topk`, sharded over this process's devices)
  or "faiss" (an approximate `faiss_index` index: "hnsw", "ivf", "flat";
  -1 where it found fewer)."""
  if not k or not len(query_emb):
    return np.zeros((len(query_emb), 0), np.int64)
  if search == "exact":
    return knn.exact_topk(query_emb, product_emb, k)[1].astype(np.int64)
  if search == "faiss":
    index = index_lib.build_index(product_emb, kind=faiss_index)
    return index_lib.ann_search(index, query_emb, k)[1].astype(np.int64)
  raise ValueError(f"mining.search={search!r}: use one of {SEARCHES}")


def candidates(query_emb: np.ndarray, product_emb: np.ndarray, *, k: int,
               num_random: int, seed: int,
               labelled: np.ndarray | None = None,
               query_index: np.ndarray | None = None,
               search: str = "exact", faiss_index: str = "hnsw",
               batch_size: int = 16384) -> dict[str, np.ndarray]:
  """-> {"query", "product" int64 (M,), "source" str (M,) "knn"|"random"}.

  Per query (in order): its top-k products by inner product, then
  `num_random` products drawn uniformly from the rest, none of them a
  labelled pair nor repeated.

  Args:
    query_emb: float (Q, E).
    product_emb: float (N, E).
    labelled: int (L, 2) (query index, product index) pairs to leave out.
    query_index: int (Q,) each query's index, default arange(Q): what the
      "query" column holds, what `labelled` names and what seeds its
      random draws, so a query's candidates are the same whichever subset
      or batch of queries it is mined with.
    search, faiss_index: see `topk`.
    batch_size: queries sampled at once (bounds the (B, draws, k) block).
  """
  n = len(product_emb)
  k = min(k, n)
  query_index = (np.arange(len(query_emb), dtype=np.int64)
                 if query_index is None else np.asarray(query_index, np.int64))
  labelled_keys = np.unique(pair_keys(*np.asarray(
      labelled if labelled is not None else np.zeros((0, 2)),
      np.int64).reshape(-1, 2).T, n))
  top = topk(query_emb, product_emb, k, search, faiss_index)
  qs, ps, knn_src = [], [], []
  for s in range(0, len(top), batch_size):
    t, g = top[s:s + batch_size], query_index[s:s + batch_size]
    rand = random_products(t, g, n, num_random, seed, labelled_keys)
    cols = np.concatenate([t, rand], axis=1)  # (B, k + num_random)
    ok = cols >= 0
    ok[:, :t.shape[1]] &= ~_in_sorted(pair_keys(g[:, None], t, n),
                                      labelled_keys)
    is_knn = np.arange(cols.shape[1]) < t.shape[1]
    qs.append(np.broadcast_to(g[:, None], cols.shape)[ok])
    ps.append(cols[ok])
    knn_src.append(np.broadcast_to(is_knn, cols.shape)[ok])
  if not qs:
    return {"query": np.zeros(0, np.int64), "product": np.zeros(0, np.int64),
            "source": np.zeros(0, "<U6")}
  return {"query": np.concatenate(qs), "product": np.concatenate(ps),
          "source": np.where(np.concatenate(knn_src), "knn", "random")}


def nearest_queries(product_emb: np.ndarray, query_emb: np.ndarray,
                    anchors: np.ndarray, k: int,
                    exclude: np.ndarray | None = None
                    ) -> dict[str, np.ndarray]:
  """-> {"query", "product" int64 (M,)}: per anchor product (in order) its
  k nearest queries, best first, minus the pairs in `exclude` int (L, 2)
  (query index, product index): already labelled or already candidates."""
  k = min(k, len(query_emb))
  if not len(anchors) or not k:
    return {"query": np.zeros(0, np.int64), "product": np.zeros(0, np.int64)}
  anchors = np.asarray(anchors, np.int64)
  top = knn.exact_topk(product_emb[anchors], query_emb, k)[1].astype(np.int64)
  product = np.broadcast_to(anchors[:, None], top.shape)
  n = len(product_emb)
  exclude = (np.zeros((0, 2), np.int64) if exclude is None
             else np.asarray(exclude, np.int64).reshape(-1, 2))
  keep = ~np.isin(pair_keys(top, product, n),
                  pair_keys(exclude[:, 0], exclude[:, 1], n))
  return {"query": top[keep], "product": product[keep]}
