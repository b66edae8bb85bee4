"""PNG plots: t-SNE of product embeddings, cosine by relevance class."""

import collections
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # Headless: never needs a display.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from sklearn import manifold


def tsne_plot(emb: np.ndarray, categories: Sequence[str], path: str,
              top: int = 10, title: str = "", seed: int = 0) -> np.ndarray:
  """t-SNE of (N, E) embeddings; the `top` commonest categories coloured.

  Returns:
    float (N, 2) t-SNE coordinates (for tests and reuse).
  """
  n = len(emb)
  if n != len(categories):
    raise ValueError(f"{n} embeddings for {len(categories)} categories")
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


def cosine_by_relevance_plot(scores: np.ndarray, labels: np.ndarray,
                             path: str, title: str = "") -> dict[int, float]:
  """Density histograms of cos(query, product) for labels 0, 1, 2.

  Args:
    scores: float (Q, N) cosine similarities; labels: int (Q, N).

  Returns:
    {label: mean cosine} for the labels present.
  """
  if scores.shape != labels.shape:
    raise ValueError(f"scores {scores.shape} vs labels {labels.shape}")
  lo, hi = float(scores.min()), float(scores.max())
  bins = np.linspace(lo, hi + 1e-6, 60)
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
  means = {}
  names = {0: "0 irrelevant", 1: "1 moderately relevant",
           2: "2 highly relevant"}
  for lab, color in ((0, "tab:grey"), (1, "tab:orange"), (2, "tab:green")):
    v = scores[labels == lab]
    if not v.size:
      continue
    means[lab] = float(v.mean())
    ax.hist(v, bins=bins, density=True, alpha=0.5, color=color,
            label=f"{names[lab]} (n={v.size}, mean {v.mean():.3f})")
  ax.set_xlabel("cosine(query, product)")
  ax.set_ylabel("density")
  ax.legend(fontsize=8)
  ax.set_title(title or "Query-product cosine by relevance label")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return means
