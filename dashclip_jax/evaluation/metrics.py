"""Retrieval metrics over graded relevance labels (0, 1, 2).

Conventions (shared by every system we evaluate, so numbers are comparable):
- Labels are a dense (Q, N) int matrix over the whole catalog: a
  (query, product) pair that the qrels file does not list is label 0.
- A ranking is a (Q, K) int matrix of product indices (columns of the label
  matrix), best first; K may be the whole catalog (exact ranking) or a top-K
  prefix (KNN output). Metrics that look past K treat unretrieved products as
  never found (MRR contributes 0, recall does not count them).
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

from typing import Sequence

import numpy as np

RECALL_KS = (1, 5, 10, 50)
NDCG_K = 10
RELEVANT = 2  # The label that Recall@K and MRR count.


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


def check_labels(labels: np.ndarray, query_ids: Sequence[str]) -> np.ndarray:
  """Validates a (Q, N) label matrix; every query needs a label-2 product."""
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(f"labels must be (Q, N), got shape {labels.shape}")
  if len(query_ids) != labels.shape[0]:
    raise ValueError(
        f"{len(query_ids)} query ids for {labels.shape[0]} label rows")
  bad = np.setdiff1d(np.unique(labels), [0, 1, 2])
  if bad.size:
    row = int(np.argwhere(np.isin(labels, bad))[0][0])
    raise ValueError(f"query {query_ids[row]!r}: labels must be 0, 1 or 2, "
                     f"found {bad.tolist()}")
  no_rel = np.flatnonzero(~(labels == RELEVANT).any(axis=1))
  if no_rel.size:
    names = [query_ids[i] for i in no_rel[:5]]
    raise ValueError(
        f"{no_rel.size} queries have no label-2 product, so Recall@K and MRR "
        f"are undefined for them: {names}{' ...' if no_rel.size > 5 else ''}")
  return labels


def per_query_metrics(ranking: np.ndarray, labels: np.ndarray,
                      query_ids: Sequence[str]) -> dict[str, np.ndarray]:
  """Per-query metrics.

  Args:
    ranking: int (Q, K) product indices, best first (no repeats per row).
    labels: int (Q, N) graded labels in {0, 1, 2}.
    query_ids: Q query ids, used in error messages.

  Returns:
    {"ndcg@10", "recall@1", ..., "recall@50", "mrr"} -> float (Q,) arrays.
  """
  labels = check_labels(labels, query_ids)
  ranking = np.asarray(ranking)
  q, n = labels.shape
  if ranking.ndim != 2 or ranking.shape[0] != q:
    raise ValueError(f"ranking shape {ranking.shape} does not match labels "
                     f"shape {labels.shape}")
  if ranking.size and (ranking.min() < 0 or ranking.max() >= n):
    raise ValueError(f"ranking holds indices outside [0, {n})")
  ranked = np.take_along_axis(labels, ranking, axis=1)  # (Q, K) labels
  rel = ranked == RELEVANT
  n_rel = (labels == RELEVANT).sum(axis=1)  # (Q,), > 0 by check_labels.
  out = {}

  gains = 2.0 ** ranked[:, :NDCG_K] - 1.0
  discounts = 1.0 / np.log2(np.arange(2, NDCG_K + 2))
  dcg = (gains * discounts[:gains.shape[1]]).sum(axis=1)
  ideal = -np.sort(-labels, axis=1)[:, :NDCG_K]
  idcg = ((2.0 ** ideal - 1.0) * discounts[:ideal.shape[1]]).sum(axis=1)
  out[f"ndcg@{NDCG_K}"] = dcg / idcg  # idcg > 0: every query has a label 2.

  for k in RECALL_KS:
    out[f"recall@{k}"] = rel[:, :k].sum(axis=1) / n_rel

  first = np.argmax(rel, axis=1)  # 0 when none found; masked below.
  out["mrr"] = np.where(rel.any(axis=1), 1.0 / (first + 1), 0.0)
  return out


def retrieval_metrics(ranking: np.ndarray, labels: np.ndarray,
                      query_ids: Sequence[str]) -> dict[str, float]:
  """Means over queries of `per_query_metrics` (plain floats)."""
  return {k: float(v.mean())
          for k, v in per_query_metrics(ranking, labels, query_ids).items()}


def hit_rate(ranking: np.ndarray, labels: np.ndarray,
             query_ids: Sequence[str], k: int = 1) -> float:
  """hit@k: the fraction of queries with a label-2 product in their top k.

  Unlike recall@k it does not divide by the query's number of label-2
  products: of two relevant products, one in the top 1 is a full hit.
  """
  labels = check_labels(labels, query_ids)
  ranking = np.asarray(ranking)[:, :k]
  if ranking.shape[0] != labels.shape[0]:
    raise ValueError(f"ranking shape {ranking.shape} does not match labels "
                     f"shape {labels.shape}")
  top = np.take_along_axis(labels, ranking, axis=1)
  return float((top == RELEVANT).any(axis=1).mean())


def labels_from_qrels(qrels: Sequence[tuple[str, str, int]],
                      query_ids: Sequence[str],
                      product_ids: Sequence[str],
                      source: str = "qrels") -> np.ndarray:
  """Builds the dense label matrix; unlisted pairs are 0.

  Args:
    qrels: (query_id, product_id, label) triples.
    query_ids: Q query ids (row order).
    product_ids: N catalog product ids (column order).
    source: name for error messages (e.g. the qrels file path).

  Returns:
    int8 (Q, N) labels.
  """
  qpos = {qid: i for i, qid in enumerate(query_ids)}
  ppos = {pid: j for j, pid in enumerate(product_ids)}
  labels = np.zeros((len(query_ids), len(product_ids)), np.int8)
  for row, (qid, pid, label) in enumerate(qrels):
    if pid not in ppos:
      raise ValueError(f"{source} row {row}: product {pid!r} of query {qid!r} "
                       "is not in the evaluated catalog split")
    if label not in (0, 1, 2):
      raise ValueError(f"{source} row {row}: label {label!r} not in (0, 1, 2)")
    i, j = qpos[qid], ppos[pid]
    if labels[i, j] and labels[i, j] != label:
      raise ValueError(f"{source} row {row}: query {qid!r} product {pid!r} "
                       f"labelled {label} after {labels[i, j]}")
    labels[i, j] = label
  return labels


def labels_from_relevance(rel) -> np.ndarray:
  """Dense int8 (Q, N) labels of a `dashclip_jax.data.relevance.Relevance`.

  Its product indices are rows of the catalog it was loaded against; pairs
  it does not list are 0.
  """
  labels = np.zeros((rel.num_queries, rel.num_products), np.int8)
  labels[np.asarray(rel.query), np.asarray(rel.product)] = rel.label
  return labels
