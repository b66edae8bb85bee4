"""Graded query-product relevance data (issue 4 c).

Layout: `query_id, query, product_id, label` in CSV or Parquet, labels
2 (highly relevant), 1 (moderately relevant), 0 (irrelevant) -- the
`relevance_train.csv` / `qrels_test.csv` files of the fashion set. This
module holds `Relevance` (the pairs as query, product and label arrays), the
product index and the query splits; `relevance_tables.load_relevance` reads
a table. Rows are validated against a Catalog; bad rows (malformed, not
UTF-8, empty query, unknown product, label outside {0, 1, 2}, duplicate
pair, one query id with two texts) are skipped and counted.

Tables reach millions of pairs (DashCLIP: 32M), so they are read in column
batches (`column_batches.with_column_batches`: pyarrow, with the python CSV
reader only for a file pyarrow would misnumber) and judged with pyarrow/numpy:
Python runs per distinct query id of a batch and per culprit named, never
per pair, and a pair costs 9 bytes kept (query, product, label) and ~30
while the duplicates are found (one stable sort of q * P + p). The result is
that of judging the rows one by one (`relevance_tables.py`). A directory
written by `python -m dashclip_jax.data.prepare` is read shard by shard
(`load_relevance(..., shard=(i, n))`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dashclip_jax.data import bad_records as br
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import tables
from dashclip_jax.data.column_batches import to_numpy


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
    keep = self.label >= min_label
    order = np.argsort(self.query[keep], kind="stable")
    products = self.product[keep][order].tolist()
    labels = self.label[keep][order].tolist()
    bounds = np.searchsorted(self.query[keep][order],
                             np.arange(self.num_queries + 1)).tolist()
    return [dict(zip(products[a:b], labels[a:b]))
            for a, b in zip(bounds[:-1], bounds[1:])]

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
    out = heldout_queries(self.queries, fraction)
    return (self.take_queries(np.flatnonzero(~out), "kept"),
            self.take_queries(np.flatnonzero(out), "held out"))

  def query_hashes(self) -> np.ndarray:
    """float64 (Q,) in [0, 1): `query_hashes` of this table's query texts."""
    return query_hashes(self.queries)

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


MALFORMED, EMPTY, BAD_LABEL, UNKNOWN, TEXT_DIFFERS, DUPLICATE = (
    tables.MALFORMED, "empty query", "label outside {0,1,2}",
    "unknown product", "query text differs", "duplicate pair")


class ProductIndex:
  """Catalog rows of product id strings, as `Catalog.index_of` finds them.

  Integer ids (the usual case) are looked up by a binary search of the
  sorted ids; others by the catalog's dict, once per distinct id of a batch.
  (pyarrow's index_in would hash the whole catalog on every call.)
  """
  # Decimal text that int() and str() map to itself, within int64.
  _INT = r"^(0|-?[1-9][0-9]{0,17})$"

  def __init__(self, catalog: catalog_lib.Catalog):
    ids, rows = catalog.id_lookup()
    self.index = None
    if len(ids) and pc.all(pc.match_substring_regex(ids, self._INT)).as_py():
      ints = to_numpy(ids.cast(pa.int64()))
      self.low, span = int(ints.min()), int(ints.max() - ints.min()) + 1
      if span <= 8 * len(ints) + (1 << 16):  # Dense ids: a direct table.
        self.table = np.full(span + 1, -1, np.int64)  # [span]: out of range
        self.table[ints - self.low] = rows
      else:
        order = np.argsort(ints)
        self.ints, self.rows_of, self.table = ints[order], rows[order], None
    else:
      self.index = dict(zip(ids.to_pylist(), rows.tolist()))

  def rows(self, pid) -> np.ndarray:
    """int64 (N,) catalog row of each id of a string array; -1: unknown."""
    if self.index is not None:
      enc = pc.dictionary_encode(pid)
      lut = np.array([self.index.get(u, -1) for u in
                      enc.dictionary.to_pylist()] + [-1], np.int64)
      return lut[to_numpy(enc.indices)]
    # Other text cannot equal the decimal text of a catalog id.
    ok = to_numpy(pc.match_substring_regex(pid, self._INT))
    value = np.zeros(len(pid), np.int64)
    value[ok] = to_numpy(pid.filter(pa.array(ok)).cast(pa.int64()))
    if self.table is not None:
      slot = value - self.low
      slot[~ok | (slot < 0) | (slot >= len(self.table))] = len(self.table) - 1
      return self.table[slot]
    at = np.minimum(np.searchsorted(self.ints, value), len(self.ints) - 1)
    found = ok & (self.ints[at] == value)
    return np.where(found, self.rows_of[at], -1)


def query_hashes(queries: Sequence[str]) -> np.ndarray:
  """float64 (Q,) in [0, 1): a hash of each query's normalised text (lower
  case, single spaces), the same on every machine (Python per query)."""
  def value(text: str) -> float:
    digest = hashlib.sha256(" ".join(text.lower().split()).encode())
    return int.from_bytes(digest.digest()[:8], "big") / 2**64
  return np.array([value(t) for t in queries], np.float64).reshape(-1)


def heldout_queries(queries: Sequence[str], fraction: float) -> np.ndarray:
  """bool (Q,): the query texts `Relevance.split_queries` holds out (their
  `query_hashes` below `fraction`)."""
  return query_hashes(queries) < fraction


def query_shards(query_ids: Sequence[str], num_shards: int) -> np.ndarray:
  """int64 (Q,) shard of each query id: a hash of the id, the same on every
  machine, so all pairs of a query land in one shard."""
  return np.array([
      int.from_bytes(hashlib.sha256(q.encode()).digest()[:8], "big")
      % num_shards for q in query_ids], np.int64)


# ---------------------------------------------------------------------------
# Stage 2's view of the relevance data: training pairs, relevant products.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pairs:
  """Stage 2's P training pairs: rows of `Relevance` kept by a label-1
  policy (`stage2_pairs`)."""
  query: np.ndarray  # int32 (P,) index into Relevance.queries
  product: np.ndarray  # int32 (P,) row in the catalog
  label: np.ndarray  # int32 (P,) 2 or 1
  weight: np.ndarray  # float32 (P,) the pair's loss weight

  def __len__(self) -> int:
    return len(self.query)


def stage2_pairs(relevance: Relevance, label1_policy: str,
                 label1_weight: float) -> Pairs:
  """Training pairs under a label-1 policy.

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
  return Pairs(relevance.query[keep], relevance.product[keep], label, weight)


def relevant_table(relevance: Relevance, max_relevant: int
                   ) -> np.ndarray:
  """int32 (Q, R): per query its label>=1 products, padded with -1.

  R = the largest count in the data, capped at `max_relevant`; a query with
  more relevant products than the cap raises (a silently truncated list
  would turn relevant products into negatives).
  """
  keep = relevance.label >= 1
  order = np.argsort(relevance.query[keep], kind="stable")
  query = relevance.query[keep][order]
  counts = np.bincount(query, minlength=relevance.num_queries)
  r = max(1, int(counts.max(initial=0)))
  if r > max_relevant:
    worst = int(np.argmax(counts))
    raise ValueError(
        f"{relevance.name}: query {relevance.query_ids[worst]} has {r} "
        f"relevant products, more than max_relevant={max_relevant}; raise it.")
  # Each pair's place among its query's pairs, in pair order.
  starts = np.cumsum(counts) - counts
  rank = np.arange(len(query)) - starts[query]
  table = np.full((relevance.num_queries, r), -1, np.int32)
  table[query, rank] = relevance.product[keep][order]
  return table
