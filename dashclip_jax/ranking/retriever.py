"""The production-like retriever that fills each session's impression list.

BM25 over product titles (the project's `bm25s` baseline), normalised per
query by its best score, plus a popularity prior and Gumbel noise (the
randomness of a real system: other features, experiments, freshness), top K
in score order. It never sees the embeddings under test.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from dashclip_jax.runtime import config_files

from dashclip_jax.evaluation import baselines


@dataclasses.dataclass(frozen=True)
class Retriever:
  """config.sim.retriever: score = bm25 / max bm25 of the query / temperature
  + popularity_weight x popularity + noise x Gumbel."""
  k1: float = 1.5
  b: float = 0.75
  temperature: float = 0.15
  popularity_weight: float = 0.5
  noise: float = 1.0

  @classmethod
  def of(cls, cfg: Mapping[str, Any]) -> "Retriever":
    out = cls(**dict(cfg))
    if out.temperature <= 0:
      raise config_files.ConfigError(
          f"config.sim.retriever.temperature must be > 0, got "
          f"{out.temperature}")
    return out


def normalised_bm25(queries: Sequence[str], titles: Sequence[str],
                    retriever: Retriever) -> np.ndarray:
  """float32 (Q, N) BM25 / the query's best score (0 where nothing
  matches)."""
  scores = baselines.bm25_scores(queries, titles, k1=retriever.k1,
                                 b=retriever.b)
  best = scores.max(axis=1, keepdims=True)
  return np.where(best > 0, scores / np.where(best > 0, best, 1.0),
                  0.0).astype(np.float32)


def impressions(bm25: np.ndarray, popularity: np.ndarray, k: int,
                retriever: Retriever, rng: np.random.Generator) -> np.ndarray:
  """(S, N) normalised BM25 rows of the sessions' queries -> int32 (S, K)
  product indices, best first."""
  if k > bm25.shape[1]:
    raise config_files.ConfigError(f"config.sim.impressions={k} is more "
                                   f"than the {bm25.shape[1]} products")
  score = (bm25 / retriever.temperature
           + retriever.popularity_weight * popularity[None]
           + retriever.noise * rng.gumbel(size=bm25.shape))
  top = np.argpartition(-score, k - 1, axis=1)[:, :k]
  order = np.argsort(-np.take_along_axis(score, top, axis=1), axis=1)
  return np.take_along_axis(top, order, axis=1).astype(np.int32)
