"""Graded relevance labels (0, 1, 2): the judged pairs of each query.

`SparseQrels` keeps them as CSR rows (memory O(judged pairs), never
O(Q * N)); a dense int (Q, N) matrix is read too (`Labels`), for small
hand-made cases. Built from qrels triples, from a `data.relevance.Relevance`,
or from pairs; `metrics.py` computes the retrieval metrics over them.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import numpy as np

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
    check_label_values(label, p, None)  # Before int8 could wrap 258 to 2.
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


def check_label_values(label: np.ndarray, indptr: np.ndarray,
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
