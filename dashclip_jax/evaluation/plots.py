"""PNG plots: t-SNE of product embeddings, cosine by relevance class."""

import collections
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # Headless: never needs a display.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from sklearn import manifold

TSNE_MAX_POINTS = 10_000  # Products a t-SNE plot maps (a fixed sample above).


def tsne_plot(emb: np.ndarray, categories: Sequence[str], path: str,
              top: int = 10, title: str = "", seed: int = 0,
              max_points: int = TSNE_MAX_POINTS) -> np.ndarray:
  """t-SNE of (N, E) embeddings; the `top` commonest categories coloured.

  Above `max_points` products a fixed sample (`seed`) of that many is
  mapped: t-SNE's cost grows faster than N, and a plot shows no more.

  Returns:
    float (min(N, max_points), 2) t-SNE coordinates of the mapped products
    (in catalog order), for tests and reuse.
  """
  n = len(emb)
  if n != len(categories):
    raise ValueError(f"{n} embeddings for {len(categories)} categories")
  if n > max_points:
    rows = np.sort(np.random.default_rng(seed).choice(n, max_points,
                                                      replace=False))
    emb, categories = np.asarray(emb)[rows], [categories[i] for i in rows]
    title = f"{title or 't-SNE'} ({max_points} of {n} sampled)"
    n = max_points
  perplexity = float(min(30, max(2, (n - 1) // 3)))
  # Barnes-Hut pays a fixed per-iteration cost that dominates tiny sets.
  method = "exact" if n < 300 else "barnes_hut"
  xy = manifold.TSNE(n_components=2, perplexity=perplexity, init="pca",
                     method=method, random_state=seed).fit_transform(
                         np.asarray(emb, np.float32))
  common = [c for c, _ in collections.Counter(categories).most_common(top)]
  cats = np.asarray(categories)
  fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
  other = ~np.isin(cats, common)
  ax.scatter(xy[other, 0], xy[other, 1], s=5, c="lightgrey", label="other")
  cmap = plt.get_cmap("tab10" if top <= 10 else "tab20")
  for i, c in enumerate(common):
    m = cats == c
    ax.scatter(xy[m, 0], xy[m, 1], s=7, color=cmap(i % cmap.N),
               label=f"{c} ({m.sum()})")
  ax.legend(markerscale=2.5, fontsize=7, loc="best", framealpha=0.8)
  ax.set_title(title or f"t-SNE of {n} product embeddings")
  ax.set_xticks([])
  ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return xy


def _pair_scores(query_emb: np.ndarray, product_emb: np.ndarray,
                 qi: np.ndarray, pi: np.ndarray, chunk: int = 1 << 14
                 ) -> np.ndarray:
  """float64 (P,) inner products of the pairs (qi, pi), `chunk` at a time."""
  out = np.empty(len(qi))
  for s in range(0, len(qi), chunk):
    q = np.asarray(query_emb[qi[s:s + chunk]], np.float64)
    p = np.asarray(product_emb[pi[s:s + chunk]], np.float64)
    out[s:s + chunk] = np.einsum("pe,pe->p", q, p)
  return out


def unjudged_pairs(qrels, max_pairs: int, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(query (P,), product (P,)) pairs the qrels do not list: all of them when
  the Q x N grid has at most `max_pairs` pairs, else a deterministic uniform
  sample (`seed`) of at most `max_pairs`."""
  q, n = qrels.shape
  listed = qrels.query_of_pair() * n + qrels.product  # Sorted keys.
  if q * n <= max_pairs:
    keys = np.arange(q * n)
  else:  # With replacement: no (Q, N) set to draw from.
    keys = np.random.default_rng(seed).integers(0, q * n, max_pairs)
  keys = keys[~np.isin(keys, listed)]
  return keys // n, keys % n


def cosine_by_relevance_plot(query_emb: np.ndarray, product_emb: np.ndarray,
                             qrels, path: str, title: str = "",
                             max_pairs: int = 1 << 20, seed: int = 0
                             ) -> dict[int, float]:
  """Density histograms of cos(query, product) for labels 0, 1, 2.

  Labels 1 and 2 (listed pairs) are drawn and averaged exactly. Label 0 is
  every other pair: its mean is exact (the sum over all pairs is
  sum(q) . sum(p), less the labelled ones); its histogram holds the listed
  label-0 pairs and every unlisted pair when there are at most `max_pairs`
  (any catalog up to ~1M pairs: the fashion test split), else a fixed
  sample of `max_pairs` (`unjudged_pairs`), so memory stays bounded.

  Args:
    query_emb: float (Q, E); product_emb: float (N, E) (unit norm: cosines).
    qrels: `qrels.SparseQrels` (Q x N).
    max_pairs, seed: the unlisted pairs histogrammed (see above).

  Returns:
    {label: mean cosine} for the labels present.
  """
  nq, n = qrels.shape
  if (len(query_emb), len(product_emb)) != (nq, n):
    raise ValueError(f"{len(query_emb)} queries x {len(product_emb)} products "
                     f"vs qrels {qrels.shape}")
  listed = _pair_scores(query_emb, product_emb, qrels.query_of_pair(),
                        qrels.product)
  uq, up = unjudged_pairs(qrels, max_pairs, seed)
  values = {lab: listed[qrels.label == lab] for lab in (1, 2)}
  values[0] = np.concatenate([listed[qrels.label == 0],
                              _pair_scores(query_emb, product_emb, uq, up)])
  positive = qrels.label > 0
  total = float(np.asarray(query_emb, np.float64).sum(0)
                @ np.asarray(product_emb, np.float64).sum(0))
  counts = {0: nq * n - int(positive.sum())}
  sums = {0: total - float(listed[positive].sum())}
  for lab in (1, 2):
    counts[lab], sums[lab] = values[lab].size, float(values[lab].sum())
  shown = np.concatenate(list(values.values()))
  lo, hi = (float(shown.min()), float(shown.max())) if shown.size else (0, 0)
  bins = np.linspace(lo, hi + 1e-6, 60)
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
  means = {}
  names = {0: "0 irrelevant", 1: "1 moderately relevant",
           2: "2 highly relevant"}
  for lab, color in ((0, "tab:grey"), (1, "tab:orange"), (2, "tab:green")):
    if not counts[lab]:
      continue
    means[lab] = sums[lab] / counts[lab]
    v = values[lab]
    drawn = "" if v.size == counts[lab] else f", {v.size} drawn"
    ax.hist(v, bins=bins, density=True, alpha=0.5, color=color,
            label=f"{names[lab]} (n={counts[lab]}{drawn}, mean "
            f"{means[lab]:.3f})")
  ax.set_xlabel("cosine(query, product)")
  ax.set_ylabel("density")
  ax.legend(fontsize=8)
  ax.set_title(title or "Query-product cosine by relevance label")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return means
