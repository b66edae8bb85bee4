"""Graded query-product relevance data (issue 4 c).

Layout: `query_id, query, product_id, label` in CSV or Parquet, labels
2 (highly relevant), 1 (moderately relevant), 0 (irrelevant) -- the
`relevance_train.csv` / `qrels_test.csv` files of the fashion set. Rows are
validated against a Catalog; bad rows (malformed, empty query, unknown
product, label outside {0, 1, 2}, duplicate pair, one query id with two texts)
are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterable, Sequence

import numpy as np

from dashclip_jax.data import bad_records as br
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import tables

LABELS = (0, 1, 2)
# How stage 2 trains on label-1 pairs (`stage2_pairs`).
LABEL1_POLICIES = ("positive", "weighted", "exclude")


@dataclasses.dataclass(frozen=True)
class RelevanceColumns:
  query_id: str = "query_id"
  query: str = "query"
  product_id: str = "product_id"
  label: str = "label"


@dataclasses.dataclass
class Relevance:
  """Judged (query, product, label) pairs over one Catalog.

  Attributes:
    name: where it came from.
    query_ids: (Q,) query ids.
    queries: (Q,) query texts.
    query: int32 (M,) pair -> index into `queries`.
    product: int32 (M,) pair -> row of the catalog it was validated against.
    label: int8 (M,) pair -> 0, 1 or 2.
    num_products: size of that catalog (product indices are < this).
    bad: the counted skips made while loading.
  """
  name: str
  query_ids: list[str]
  queries: list[str]
  query: np.ndarray
  product: np.ndarray
  label: np.ndarray
  num_products: int
  bad: br.BadRecords | None = None

  def __len__(self) -> int:
    return len(self.label)

  @property
  def num_queries(self) -> int:
    return len(self.queries)

  def qrels(self, min_label: int = 1) -> list[dict[int, int]]:
    """Per query: {product index: label} for labels >= min_label."""
    out = [dict() for _ in range(self.num_queries)]
    for q, p, l in zip(self.query, self.product, self.label):
      if l >= min_label:
        out[int(q)][int(p)] = int(l)
    return out

  def products_by_query(self, labels: Sequence[int]) -> list[np.ndarray]:
    """Per query: int32 array of product indices whose label is in `labels`."""
    keep = np.isin(self.label, labels)
    return _group(self.query[keep], self.product[keep], self.num_queries)

  def split_queries(self, fraction: float
                    ) -> tuple["Relevance", "Relevance"]:
    """-> (kept, held out): each query with all its pairs goes to one side.

    A query is held out when a hash of its normalised text falls below
    `fraction`, so two ids with one text never straddle the split and the
    choice is the same on every machine (model selection never sees a
    training query, nor tunes on the test set).
    """
    def held(text: str) -> bool:
      digest = hashlib.sha256(" ".join(text.lower().split()).encode())
      return int.from_bytes(digest.digest()[:8], "big") / 2**64 < fraction
    out = np.array([held(t) for t in self.queries], bool)
    return (self.take_queries(np.flatnonzero(~out), "kept"),
            self.take_queries(np.flatnonzero(out), "held out"))

  def take_queries(self, indices: Sequence[int], what: str) -> "Relevance":
    """The pairs of queries `indices` (renumbered 0..), same catalog."""
    indices = np.asarray(indices, np.int64)
    new = np.full((self.num_queries,), -1, np.int64)
    new[indices] = np.arange(len(indices))
    keep = new[self.query] >= 0
    return Relevance(
        name=f"{self.name} [{what}: {len(indices)} queries]",
        query_ids=[self.query_ids[i] for i in indices],
        queries=[self.queries[i] for i in indices],
        query=new[self.query[keep]].astype(np.int32),
        product=self.product[keep], label=self.label[keep],
        num_products=self.num_products, bad=self.bad)

  def queries_by_product(self, labels: Sequence[int]) -> list[np.ndarray]:
    """Per product: int32 array of query indices whose label is in `labels`."""
    keep = np.isin(self.label, labels)
    return _group(self.product[keep], self.query[keep], self.num_products)


def _group(keys: np.ndarray, values: np.ndarray, n: int) -> list[np.ndarray]:
  order = np.argsort(keys, kind="stable")
  keys, values = keys[order], values[order]
  bounds = np.searchsorted(keys, np.arange(n + 1))
  return [values[bounds[i]:bounds[i + 1]].astype(np.int32) for i in range(n)]


def relevance_from_rows(
    rows: Iterable[tables.Row],
    catalog: catalog_lib.Catalog,
    *,
    name: str,
    columns: RelevanceColumns = RelevanceColumns(),
    header: Sequence[str] | None = None,
    max_bad_fraction: float = 0.01,
) -> Relevance:
  """Validates (where, row, error) triples against `catalog`."""
  if header is not None:
    tables.require_columns(name, header, dataclasses.astuple(columns))
  bad = br.BadRecords(f"relevance {name}", max_bad_fraction=max_bad_fraction)
  qindex: dict[str, int] = {}
  query_ids, queries = [], []
  qs, ps, ls = [], [], []
  seen_pairs = set()
  for where, row, error in rows:
    if row is None:
      bad.bad(where, "malformed row", error)
      continue
    qid = tables.cell_text(row.get(columns.query_id))
    text = tables.cell_text(row.get(columns.query))
    pid = tables.cell_text(row.get(columns.product_id))
    raw = tables.cell_text(row.get(columns.label))
    if not qid or not text:
      bad.bad(where, "empty query", f"query_id {qid!r}")
      continue
    try:
      label = int(raw)
    except ValueError:
      label = None
    if label not in LABELS:
      bad.bad(where, "label outside {0,1,2}", f"label {raw!r}")
      continue
    p = catalog.index_of(pid)
    if p is None:
      bad.bad(where, "unknown product", f"product_id {pid!r}")
      continue
    q = qindex.get(qid)
    if q is None:
      q = qindex[qid] = len(queries)
      query_ids.append(qid)
      queries.append(text)
    elif queries[q] != text:
      bad.bad(where, "query text differs",
              f"query_id {qid}: {text!r} vs {queries[q]!r}")
      continue
    if (q, p) in seen_pairs:
      bad.bad(where, "duplicate pair", f"{qid}, {pid}")
      continue
    seen_pairs.add((q, p))
    qs.append(q)
    ps.append(p)
    ls.append(label)
    bad.ok()
  if not ls:
    raise br.BadDataError(f"{name}: no usable relevance rows. {bad.summary()}")
  bad.check()
  return Relevance(
      name=name, query_ids=query_ids, queries=queries,
      query=np.array(qs, np.int32), product=np.array(ps, np.int32),
      label=np.array(ls, np.int8), num_products=len(catalog), bad=bad)


def load_relevance(
    path: str,
    catalog: catalog_lib.Catalog,
    columns: RelevanceColumns = RelevanceColumns(),
    *,
    max_bad_fraction: float = 0.01,
) -> Relevance:
  """Reads `query_id, query, product_id, label` rows (CSV or Parquet).

  Args:
    path: e.g. ".../fashion/relevance_train.csv".
    catalog: products the rows must name (e.g. `catalog.subset("train")`);
      rows naming any other product are skipped as "unknown product".
    columns: column mapping.
    max_bad_fraction: above this fraction of skipped rows, raise BadDataError.
  """
  header, rows = tables.read_table_rows(path)
  return relevance_from_rows(rows, catalog, name=path, columns=columns,
                             header=header, max_bad_fraction=max_bad_fraction)


# ---------------------------------------------------------------------------
# Stage 2's view of the relevance data: training pairs, relevant products.
# ---------------------------------------------------------------------------


def stage2_pairs(relevance: Relevance, label1_policy: str,
                 label1_weight: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Training pairs under a label-1 policy -> (query, product, label, weight).

  "positive": label 1 and 2 pairs are positives with weight 1.
  "weighted": both are positives; label-1 pairs get weight `label1_weight`.
  "exclude":  label-1 pairs are no training pairs (dropped here), so they are
              neither anchors nor in-batch negatives; the step-side
              `StepConfig.label_policy="exclude"` means the same (it masks
              such rows out, see losses.LABEL_POLICIES).
  In every policy label-1 products stay in `relevant_product_ids`, so they
  are never used as in-batch negatives of their query.
  """
  if label1_policy not in LABEL1_POLICIES:
    raise ValueError(f"label1_policy {label1_policy!r} not in "
                     f"{LABEL1_POLICIES}")
  keep = relevance.label == 2
  if label1_policy != "exclude":
    keep |= relevance.label == 1
  label = relevance.label[keep].astype(np.int32)
  weight = np.ones(len(label), np.float32)
  if label1_policy == "weighted":
    weight[label == 1] = label1_weight
  return relevance.query[keep], relevance.product[keep], label, weight


def relevant_table(relevance: Relevance, max_relevant: int
                   ) -> np.ndarray:
  """int32 (Q, R): per query its label>=1 products, padded with -1.

  R = the largest count in the data, capped at `max_relevant`; a query with
  more relevant products than the cap raises (a silently truncated list
  would turn relevant products into negatives).
  """
  groups = relevance.products_by_query([1, 2])
  r = max(1, max(len(g) for g in groups))
  if r > max_relevant:
    worst = int(np.argmax([len(g) for g in groups]))
    raise ValueError(
        f"{relevance.name}: query {relevance.query_ids[worst]} has {r} "
        f"relevant products, more than max_relevant={max_relevant}; raise it.")
  table = np.full((len(groups), r), -1, np.int32)
  for q, g in enumerate(groups):
    table[q, :len(g)] = g
  return table
