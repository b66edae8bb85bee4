"""Retrieval metrics over graded relevance labels (0, 1, 2).

Conventions (shared by every system we evaluate, so numbers are comparable):
- Labels are either a dense (Q, N) int matrix over the whole catalog or a
  `qrels.SparseQrels` (the judged pairs of each query, CSR rows): a (query,
  product) pair that is not listed is label 0. Every metric takes either and
  gives the same numbers; at catalog scale (400K products) only the sparse
  form fits in memory.
- A ranking is a (Q, K) int matrix of product indices (columns of the label
  matrix), best first; K may be the whole catalog (exact ranking) or a top-K
  prefix (KNN output). Metrics that look past K treat unretrieved products as
  never found (MRR contributes 0, recall does not count them):
  `truncated_metrics` names the ones a depth-K ranking cuts short.
- Ties: `rank_by_score` orders equal scores by ascending product index (a
  stable sort of -score), and the sharded KNN in `knn.py` does the same, so
  a system that scores many products equally (BM25 zeros) gets one
  deterministic ranking.
- Recall@K, hit@K and MRR count label-2 ("highly relevant") products only;
  NDCG@10 uses gain 2^label - 1 and an ideal DCG built from all labelled
  products of the query. A query without any label-2 product makes Recall
  and MRR undefined, so it is rejected (`ValueError` naming the query id)
  rather than silently averaged in as 0 or skipped.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dashclip_jax.evaluation import qrels as qrels_lib

RECALL_KS = (1, 5, 10, 50)
NDCG_K = 10


def rank_by_score(scores: np.ndarray, k: int | None = None) -> np.ndarray:
  """Ranks products by descending score; ties go to the lower product index.

  Args:
    scores: float (Q, N) query-product scores.
    k: keep the top k (default: all N).

  Returns:
    int64 (Q, k) product indices, best first.
  """
  scores = np.asarray(scores)
  if scores.ndim != 2:
    raise ValueError(f"scores must be (Q, N), got shape {scores.shape}")
  if np.isnan(scores).any():
    q, n = np.argwhere(np.isnan(scores))[0]
    raise ValueError(f"NaN score for query row {q}, product column {n}")
  # Stable sort of the negated scores: equal scores keep index order.
  order = np.argsort(-scores, axis=1, kind="stable")
  return order if k is None else order[:, :k]


def _as_qrels(labels: qrels_lib.Labels, query_ids: Sequence[str]
              ) -> qrels_lib.SparseQrels:
  """Validated SparseQrels of dense or sparse `labels`; every query needs a
  label-2 product."""
  if not isinstance(labels, qrels_lib.SparseQrels):
    labels = np.asarray(labels)
    if labels.ndim != 2:
      raise ValueError(f"labels must be (Q, N), got shape {labels.shape}")
    if len(query_ids) != labels.shape[0]:
      raise ValueError(
          f"{len(query_ids)} query ids for {labels.shape[0]} label rows")
    qrels_lib.check_label_values(
        labels, np.arange(labels.shape[0] + 1) * labels.shape[1], query_ids)
    labels = qrels_lib.SparseQrels.from_dense(labels)
  if len(query_ids) != labels.num_queries:
    raise ValueError(
        f"{len(query_ids)} query ids for {labels.num_queries} label rows")
  no_rel = np.flatnonzero(~labels.has_relevant())
  if no_rel.size:
    names = [query_ids[i] for i in no_rel[:5]]
    raise ValueError(
        f"{no_rel.size} queries have no label-2 product, so Recall@K and MRR "
        f"are undefined for them: {names}{' ...' if no_rel.size > 5 else ''}")
  return labels


def check_labels(labels: qrels_lib.Labels, query_ids: Sequence[str]
                 ) -> qrels_lib.Labels:
  """Validates labels (dense (Q, N) or SparseQrels): values in {0, 1, 2},
  one query id per row, and a label-2 product for every query. Returns
  `labels` (dense ones as an array)."""
  _as_qrels(labels, query_ids)
  if isinstance(labels, qrels_lib.SparseQrels):
    return labels
  return np.asarray(labels)


def _check_ranking(ranking: np.ndarray, qrels: qrels_lib.SparseQrels
                   ) -> np.ndarray:
  ranking = np.asarray(ranking)
  if ranking.ndim != 2 or ranking.shape[0] != qrels.num_queries:
    raise ValueError(f"ranking shape {ranking.shape} does not match labels "
                     f"shape {qrels.shape}")
  n = qrels.num_products
  if ranking.size and (ranking.min() < 0 or ranking.max() >= n):
    raise ValueError(f"ranking holds indices outside [0, {n})")
  return ranking


def _ideal_dcg(qrels: qrels_lib.SparseQrels) -> np.ndarray:
  """float64 (Q,): DCG@NDCG_K of each query's labels sorted descending."""
  q = qrels.query_of_pair()
  order = np.lexsort((-qrels.label.astype(np.int64), q))  # Query, -label.
  rank = np.arange(q.size) - qrels.indptr[q[order]]  # Rank within query.
  top = rank < NDCG_K
  gain = 2.0 ** qrels.label[order][top] - 1.0
  discount = 1.0 / np.log2(rank[top] + 2.0)
  return np.bincount(q[order][top], weights=gain * discount,
                     minlength=qrels.num_queries)


def per_query_metrics(ranking: np.ndarray, labels: qrels_lib.Labels,
                      query_ids: Sequence[str]) -> dict[str, np.ndarray]:
  """Per-query metrics.

  Args:
    ranking: int (Q, K) product indices, best first (no repeats per row).
    labels: int (Q, N) graded labels in {0, 1, 2}, or a SparseQrels.
    query_ids: Q query ids, used in error messages.

  Returns:
    {"ndcg@10", "recall@1", ..., "recall@50", "mrr"} -> float (Q,) arrays.
  """
  qrels = _as_qrels(labels, query_ids)
  pos, found = qrels.locate(_check_ranking(ranking, qrels))
  position = np.full(qrels.label.shape, -1, np.int64)
  position[pos[found]] = np.nonzero(found)[1]
  return _metrics_at(qrels, position)


def metrics_at_positions(labels: qrels_lib.SparseQrels,
                         position: np.ndarray, query_ids: Sequence[str]
                         ) -> dict[str, np.ndarray]:
  """`per_query_metrics` of a ranking given as where each judged pair sits.

  Args:
    labels: the judged pairs.
    position: int (M,) 0-based rank of each pair of `labels` in its query's
      ranking, -1 where not retrieved. Unjudged products fill the other
      ranks (label 0).
    query_ids: Q query ids, used in error messages.
  """
  qrels = _as_qrels(labels, query_ids)
  position = np.asarray(position, np.int64)
  if position.shape != qrels.label.shape:
    raise ValueError(f"{position.shape} positions for {qrels.label.size} "
                     "judged pairs")
  return _metrics_at(qrels, position)


def _metrics_at(qrels: qrels_lib.SparseQrels, position: np.ndarray
                ) -> dict[str, np.ndarray]:
  """The metrics from each judged pair's rank (int64 (M,), -1: not found);
  memory O(judged pairs)."""
  q, n_q = qrels.query_of_pair(), qrels.num_queries
  found = position >= 0
  rel = found & (qrels.label == qrels_lib.RELEVANT)
  n_rel = qrels.num_relevant()  # (Q,), > 0 by _as_qrels.
  out = {}

  top = found & (position < NDCG_K)
  gain = 2.0 ** qrels.label[top] - 1.0
  dcg = np.bincount(q[top], weights=gain / np.log2(position[top] + 2.0),
                    minlength=n_q)
  # > 0: every query has a label 2.
  out[f"ndcg@{NDCG_K}"] = dcg / _ideal_dcg(qrels)

  for k in RECALL_KS:
    out[f"recall@{k}"] = np.bincount(q[rel & (position < k)],
                                     minlength=n_q) / n_rel

  first = np.full(n_q, np.inf)
  np.minimum.at(first, q[rel], position[rel])
  out["mrr"] = 1.0 / (first + 1)  # 0 where none was found.
  return out


def judged_positions(labels: qrels_lib.SparseQrels, scores: np.ndarray
                     ) -> np.ndarray:
  """Ranks each query's judged products by their pair scores.

  The positions are those each judged pair gets in `rank_by_score` of the
  (Q, N) matrix that holds `scores` at the judged pairs and -inf everywhere
  else, NaN read as -inf: by score descending, ties to the lower product
  index, and pairs at -inf (NaN) among the unjudged products by index --
  without building that matrix (memory O(judged pairs)).

  Args:
    labels: the judged pairs (M of them).
    scores: float (M,) score of each pair, in `labels`' order.

  Returns:
    int64 (M,) 0-based rank of each pair, for `metrics_at_positions`.
  """
  scores = np.asarray(scores, np.float64)
  if scores.shape != labels.label.shape:
    raise ValueError(f"{scores.shape} scores for {labels.label.size} judged "
                     "pairs")
  scores = np.where(np.isnan(scores), -np.inf, scores)
  q = labels.query_of_pair()
  start = labels.indptr[q]
  # Query, then score descending, then product ascending.
  order = np.lexsort((labels.product, -scores, q))
  position = np.empty(q.shape, np.int64)
  position[order] = np.arange(q.size) - start[order]
  # Pairs at -inf follow the query's finite pairs, among the unjudged
  # products in index order: ahead of one sit the products of lower index
  # that score -inf, i.e. all of them but the finite judged ones.
  finite = scores > -np.inf
  before = np.cumsum(finite) - finite  # Finite pairs before, in CSR order.
  finite_before = before - before[start] if q.size else before
  n_finite = np.bincount(q[finite], minlength=labels.num_queries)
  return np.where(finite, position,
                  n_finite[q] + labels.product - finite_before)


def retrieval_metrics(ranking: np.ndarray, labels: qrels_lib.Labels,
                      query_ids: Sequence[str]) -> dict[str, float]:
  """Means over queries of `per_query_metrics` (plain floats)."""
  return {k: float(v.mean())
          for k, v in per_query_metrics(ranking, labels, query_ids).items()}


def truncated_metrics(depth: int, num_products: int) -> list[str]:
  """The `per_query_metrics` keys that a depth-`depth` ranking of a
  `num_products` catalog cuts short (products past the depth count as never
  found): recall@k for k > depth, NDCG@10 below depth 10, MRR (then MRR@depth).
  Empty for a full ranking. Reports mark these as truncated.
  """
  if depth >= num_products:
    return []
  out = [f"ndcg@{NDCG_K}"] if depth < NDCG_K else []
  out += [f"recall@{k}" for k in RECALL_KS if k > depth]
  return out + ["mrr"]


def hit_rate(ranking: np.ndarray, labels: qrels_lib.Labels,
             query_ids: Sequence[str], k: int = 1) -> float:
  """hit@k: the fraction of queries with a label-2 product in their top k.

  Unlike recall@k it does not divide by the query's number of label-2
  products: of two relevant products, one in the top 1 is a full hit.
  """
  qrels = _as_qrels(labels, query_ids)
  top = qrels.lookup(_check_ranking(np.asarray(ranking)[:, :k], qrels))
  return float((top == qrels_lib.RELEVANT).any(axis=1).mean())
