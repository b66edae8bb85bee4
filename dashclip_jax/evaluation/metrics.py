"""Retrieval metrics over graded relevance labels (0, 1, 2).

Conventions (shared by every system we evaluate, so numbers are comparable):
- Labels are either a dense (Q, N) int matrix over the whole catalog or a
  `SparseQrels` (the judged pairs of each query, CSR rows): a (query,
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

import dataclasses
from typing import Sequence, Union

import numpy as np

RECALL_KS = (1, 5, 10, 50)
NDCG_K = 10
RELEVANT = 2  # The label that Recall@K and MRR count.
LABELS = (0, 1, 2)


# eq=False: arrays have no truth value, so field-wise == (and hash) would raise.
@dataclasses.dataclass(frozen=True, eq=False)
class SparseQrels:
  """Graded labels as CSR rows: query q's judged products are
  product[indptr[q]:indptr[q+1]] (ascending), with labels label[...]. Judged
  pairs may have label 0; unlisted pairs count as 0.

  Memory is O(judged pairs), never O(Q * N).
  """
  indptr: np.ndarray   # int64 (Q + 1,)
  product: np.ndarray  # int32 (M,) column (product) index, < num_products
  label: np.ndarray    # int8 (M,) in {0, 1, 2}
  num_products: int

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("indptr", np.asarray(self.indptr, np.int64))
    set_("product", np.asarray(self.product, np.int32))
    set_("num_products", int(self.num_products))
    p, label = self.indptr, np.asarray(self.label)
    if (p.ndim != 1 or not p.size or p[0] != 0 or p[-1] != self.product.size
        or self.product.shape != label.shape or np.any(np.diff(p) < 0)):
      raise ValueError(
          f"inconsistent SparseQrels: indptr {p.shape} from {p[:1]} to "
          f"{p[-1:]}, {self.product.shape} products, {label.shape} labels")
    _check_label_values(label, p, None)  # Before int8 could wrap 258 to 2.
    set_("label", label.astype(np.int8))
    # `locate` searches the pairs by (query, product): each row ascending.
    keys = self.query_of_pair() * self.num_products + self.product
    if self.product.size and (
        self.product.min() < 0 or self.product.max() >= self.num_products
        or np.any(np.diff(keys) <= 0)):
      raise ValueError("SparseQrels products must be in [0, "
                       f"{self.num_products}) and ascending within each row")

  @property
  def num_queries(self) -> int:
    return len(self.indptr) - 1

  @property
  def shape(self) -> tuple[int, int]:
    return self.num_queries, self.num_products

  @classmethod
  def from_pairs(cls, query: np.ndarray, product: np.ndarray,
                 label: np.ndarray, num_queries: int, num_products: int,
                 source: str = "qrels") -> SparseQrels:
    """Judged (query, product, label) pairs, in any order -> SparseQrels.

    A pair listed twice with the same label counts once; with different
    labels, or with an index or label out of range, it is a ValueError
    naming the pair (its position in the inputs) and `source`.
    """
    query, product, label = (np.asarray(x).reshape(-1)
                             for x in (query, product, label))
    if not query.size == product.size == label.size:
      raise ValueError(f"{source}: {query.size} queries, {product.size} "
                       f"products and {label.size} labels per pair")
    for name, x, hi in (("query", query, num_queries),
                        ("product", product, num_products)):
      bad = np.flatnonzero((x < 0) | (x >= hi))
      if bad.size:
        raise ValueError(f"{source} pair {bad[0]}: {name} index {x[bad[0]]} "
                         f"outside [0, {hi})")
    bad = np.flatnonzero(~np.isin(label, LABELS))
    if bad.size:
      raise ValueError(f"{source} pair {bad[0]}: label {label[bad[0]]} not "
                       "in (0, 1, 2)")
    order = np.lexsort((product, query))  # By query, then product.
    q, p, l = query[order], product[order], label[order]
    same = (q[1:] == q[:-1]) & (p[1:] == p[:-1])
    clash = np.flatnonzero(same & (l[1:] != l[:-1]))
    if clash.size:
      i = clash[0]
      first, second = sorted((int(order[i]), int(order[i + 1])))
      raise ValueError(
          f"{source} pair {second}: query {q[i]} product {p[i]} labelled "
          f"{label[second]} after {label[first]} (pair {first})")
    keep = np.concatenate([[True], ~same])
    q, p, l = q[keep], p[keep], l[keep]
    indptr = np.zeros(num_queries + 1, np.int64)
    np.cumsum(np.bincount(q, minlength=num_queries), out=indptr[1:])
    return cls(indptr, p, l, num_products)

  @classmethod
  def from_dense(cls, labels: np.ndarray) -> SparseQrels:
    """int (Q, N) labels -> their nonzero entries (tests, small data)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
      raise ValueError(f"labels must be (Q, N), got shape {labels.shape}")
    q, p = np.nonzero(labels)  # Row-major: by query, then product.
    indptr = np.zeros(labels.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(q, minlength=labels.shape[0]), out=indptr[1:])
    return cls(indptr, p, labels[q, p], labels.shape[1])

  def to_dense(self) -> np.ndarray:
    """int8 (Q, N): tests and small data only."""
    out = np.zeros(self.shape, np.int8)
    out[self.query_of_pair(), self.product] = self.label
    return out

  def query_of_pair(self) -> np.ndarray:
    """int64 (M,): the query (row) of each judged pair."""
    return np.repeat(np.arange(self.num_queries), np.diff(self.indptr))

  def take_queries(self, rows: np.ndarray) -> SparseQrels:
    """The rows `rows` (int indices, any order, or a bool (Q,) mask)."""
    rows = np.asarray(rows)
    rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
    starts, sizes = self.indptr[rows], np.diff(self.indptr)[rows]
    indptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(sizes, out=indptr[1:])
    # Pair j of new row r sits at starts[r] + (j - indptr[r]).
    pos = np.repeat(starts - indptr[:-1], sizes) + np.arange(indptr[-1])
    return SparseQrels(indptr, self.product[pos], self.label[pos],
                       self.num_products)

  def take_products(self, keep: np.ndarray) -> SparseQrels:
    """Keeps the columns where bool (N,) `keep` is True, renumbered in order
    (pairs of dropped products go)."""
    keep = np.asarray(keep, bool)
    if keep.shape != (self.num_products,):
      raise ValueError(f"keep {keep.shape} must be ({self.num_products},)")
    new_col = np.cumsum(keep) - 1
    ok = keep[self.product]
    indptr = np.zeros(self.num_queries + 1, np.int64)
    np.cumsum(np.bincount(self.query_of_pair()[ok],
                          minlength=self.num_queries), out=indptr[1:])
    return SparseQrels(indptr, new_col[self.product[ok]], self.label[ok],
                       int(keep.sum()))

  def locate(self, ranking: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (pair position, found) for each (row, product) of a (Q, K)
    ranking; position is meaningless where not found."""
    ranking = np.asarray(ranking, np.int64)
    if ranking.ndim != 2 or ranking.shape[0] != self.num_queries:
      raise ValueError(f"ranking shape {ranking.shape} does not match labels "
                       f"shape {self.shape}")
    # Pairs sorted by (query, product) == sorted by this key.
    keys = self.query_of_pair() * self.num_products + self.product
    want = (np.arange(self.num_queries)[:, None] * self.num_products
            + ranking)
    pos = np.minimum(np.searchsorted(keys, want), max(keys.size - 1, 0))
    found = keys[pos] == want if keys.size else np.zeros(want.shape, bool)
    return pos, found

  def lookup(self, ranking: np.ndarray) -> np.ndarray:
    """int8 (Q, K) labels of a (Q, K) ranking's products (0: unjudged)."""
    pos, found = self.locate(ranking)
    if not self.label.size:
      return np.zeros(pos.shape, np.int8)
    return np.where(found, self.label[pos], 0).astype(np.int8)

  def judged(self, ranking: np.ndarray) -> np.ndarray:
    """bool (Q, K): whether each ranked pair is judged (even as 0)."""
    return self.locate(ranking)[1]

  def has_relevant(self) -> np.ndarray:
    """bool (Q,): whether the query has a label-2 product."""
    return self.num_relevant() > 0

  def num_relevant(self) -> np.ndarray:
    """int64 (Q,): the query's number of label-2 products."""
    return np.bincount(self.query_of_pair()[self.label == RELEVANT],
                       minlength=self.num_queries)


Labels = Union[np.ndarray, SparseQrels]


def _check_label_values(label: np.ndarray, indptr: np.ndarray,
                        query_ids: Sequence[str] | None) -> None:
  """Labels (flat or (Q, N) row-major, rows cut at `indptr`) in {0, 1, 2};
  the error names the first bad row's query."""
  bad_at = np.flatnonzero((label < 0) | (label > 2))
  if bad_at.size:
    bad = np.unique(np.ravel(label)[bad_at])
    row = int(np.searchsorted(indptr, bad_at[0], side="right") - 1)
    name = repr(query_ids[row]) if query_ids is not None else f"row {row}"
    raise ValueError(f"query {name}: labels must be 0, 1 or 2, "
                     f"found {bad.tolist()}")


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


def _as_qrels(labels: Labels, query_ids: Sequence[str]) -> SparseQrels:
  """Validated SparseQrels of dense or sparse `labels`; every query needs a
  label-2 product."""
  if not isinstance(labels, SparseQrels):
    labels = np.asarray(labels)
    if labels.ndim != 2:
      raise ValueError(f"labels must be (Q, N), got shape {labels.shape}")
    if len(query_ids) != labels.shape[0]:
      raise ValueError(
          f"{len(query_ids)} query ids for {labels.shape[0]} label rows")
    _check_label_values(labels, np.arange(labels.shape[0] + 1) *
                        labels.shape[1], query_ids)
    labels = SparseQrels.from_dense(labels)
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


def check_labels(labels: Labels, query_ids: Sequence[str]) -> Labels:
  """Validates labels (dense (Q, N) or SparseQrels): values in {0, 1, 2},
  one query id per row, and a label-2 product for every query. Returns
  `labels` (dense ones as an array)."""
  _as_qrels(labels, query_ids)
  return labels if isinstance(labels, SparseQrels) else np.asarray(labels)


def _check_ranking(ranking: np.ndarray, qrels: SparseQrels) -> np.ndarray:
  ranking = np.asarray(ranking)
  if ranking.ndim != 2 or ranking.shape[0] != qrels.num_queries:
    raise ValueError(f"ranking shape {ranking.shape} does not match labels "
                     f"shape {qrels.shape}")
  n = qrels.num_products
  if ranking.size and (ranking.min() < 0 or ranking.max() >= n):
    raise ValueError(f"ranking holds indices outside [0, {n})")
  return ranking


def _ideal_dcg(qrels: SparseQrels) -> np.ndarray:
  """float64 (Q,): DCG@NDCG_K of each query's labels sorted descending."""
  q = qrels.query_of_pair()
  order = np.lexsort((-qrels.label.astype(np.int64), q))  # Query, -label.
  rank = np.arange(q.size) - qrels.indptr[q[order]]  # Rank within query.
  top = rank < NDCG_K
  gain = 2.0 ** qrels.label[order][top] - 1.0
  discount = 1.0 / np.log2(rank[top] + 2.0)
  return np.bincount(q[order][top], weights=gain * discount,
                     minlength=qrels.num_queries)


def per_query_metrics(ranking: np.ndarray, labels: Labels,
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


def metrics_at_positions(labels: SparseQrels, position: np.ndarray,
                         query_ids: Sequence[str]) -> dict[str, np.ndarray]:
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


def _metrics_at(qrels: SparseQrels, position: np.ndarray
                ) -> dict[str, np.ndarray]:
  """The metrics from each judged pair's rank (int64 (M,), -1: not found);
  memory O(judged pairs)."""
  q, n_q = qrels.query_of_pair(), qrels.num_queries
  found = position >= 0
  rel = found & (qrels.label == RELEVANT)
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


def judged_positions(labels: SparseQrels, scores: np.ndarray) -> np.ndarray:
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


def retrieval_metrics(ranking: np.ndarray, labels: Labels,
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


def hit_rate(ranking: np.ndarray, labels: Labels,
             query_ids: Sequence[str], k: int = 1) -> float:
  """hit@k: the fraction of queries with a label-2 product in their top k.

  Unlike recall@k it does not divide by the query's number of label-2
  products: of two relevant products, one in the top 1 is a full hit.
  """
  qrels = _as_qrels(labels, query_ids)
  top = qrels.lookup(_check_ranking(np.asarray(ranking)[:, :k], qrels))
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


def qrels_from_relevance(rel) -> SparseQrels:
  """SparseQrels of a `dashclip_jax.data.relevance.Relevance` (its product
  indices are rows of the catalog it was loaded against)."""
  return SparseQrels.from_pairs(rel.query, rel.product, rel.label,
                                rel.num_queries, rel.num_products,
                                source=getattr(rel, "name", "relevance"))
