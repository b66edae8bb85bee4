"""Graded query-product relevance data (issue 4 c).

Layout: `query_id, query, product_id, label` in CSV or Parquet, labels
2 (highly relevant), 1 (moderately relevant), 0 (irrelevant) -- the
`relevance_train.csv` / `qrels_test.csv` files of the fashion set. Rows are
validated against a Catalog; bad rows (malformed, not UTF-8, empty query,
unknown product, label outside {0, 1, 2}, duplicate pair, one query id with
two texts) are skipped and counted.

Tables reach millions of pairs (DashCLIP: 32M), so they are read in column
batches (`tables.with_column_batches`: pyarrow, with the python CSV reader
only for a file pyarrow would misnumber) and judged with pyarrow/numpy:
Python runs per distinct query id of a batch and per culprit named, never
per pair, and a pair costs 9 bytes kept (query, product, label) and ~30
while the duplicates are found (one stable sort of q * P + p). The result is
that of judging the rows one by one (`relevance_from_batches`). A directory
written by `python -m dashclip_jax.data.prepare` is read shard by shard
(`load_relevance(..., shard=(i, n))`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
  return relevance_from_batches(
      tables.rows_to_batches(rows, dataclasses.astuple(columns)), catalog,
      name=name, columns=columns, max_bad_fraction=max_bad_fraction)


# Why a row is skipped, in the order the checks judge a row.
UNDECODABLE = tables.UNDECODABLE  # Bytes that are not UTF-8: any check.
MALFORMED, EMPTY, BAD_LABEL, UNKNOWN, TEXT_DIFFERS, DUPLICATE = (
    tables.MALFORMED, "empty query", "label outside {0,1,2}",
    "unknown product", "query text differs", "duplicate pair")
# Judged where UNKNOWN is: a product of the whole catalog, in another split.
OTHER_SPLIT = "product in another split"


def relevance_from_batches(
    batches: Iterable[tables.ColumnBatch],
    catalog: catalog_lib.Catalog,
    *,
    name: str,
    columns: RelevanceColumns = RelevanceColumns(),
    max_bad_fraction: float = 0.01,
    whole: catalog_lib.Catalog | None = None,
) -> Relevance:
  """Validates column batches against `catalog`, with no Python per row.

  The result equals judging the rows one by one, in order: a row is skipped
  for the first failing check of malformed, empty query, label outside
  {0,1,2}, unknown product, query text differs (the first row passing the
  checks before it fixes its query id's text) and duplicate pair (the first
  row passing all the checks before it owns the pair). Query indices follow
  the first appearance of a query id among such rows. Python runs per
  distinct query of a batch and per bad row named as a culprit.

  `whole`: the catalog of all splits that `catalog` is one split of; a row
  whose product is there but not in `catalog` is skipped as OTHER_SPLIT
  ("product 10235 is in the test split"), not as an unknown product.
  """
  loader = _Loader(catalog, columns,
                   br.BadRecords(f"relevance {name}",
                                 max_bad_fraction=max_bad_fraction), whole)
  for batch in batches:
    loader.add(batch)
  pa.default_memory_pool().release_unused()  # The batches' text is gone.
  return loader.finish(name)


class _Loader:
  """The state `relevance_from_batches` keeps across batches."""

  def __init__(self, catalog: catalog_lib.Catalog, columns: RelevanceColumns,
               bad: br.BadRecords, whole: catalog_lib.Catalog | None = None):
    self.catalog, self.columns, self.bad = catalog, columns, bad
    self.products = ProductIndex(catalog)
    self.whole, self._whole_products = whole, None
    self.qindex: dict[str, int] = {}
    self.query_ids: list[str] = []
    self.queries: list[str] = []
    # Per batch: (start, query, product, label, row in batch) of rows passing.
    self.parts = []
    self.counts = collections.Counter()  # reason -> rows
    self.culprits = []  # (record, reason, where, detail), the first ones.
    self.names = tables.Names()

  def _culprits(self, batch, reason, rows, detail) -> None:
    """Counts `rows` (batch indices, ascending) and names the first ones."""
    self.counts[reason] += len(rows)
    for i in rows[:self.bad.max_culprits]:
      self.culprits.append((batch.start + int(i), reason, batch.where(int(i)),
                            detail(int(i))))

  def add(self, batch: tables.ColumnBatch) -> None:
    n = len(batch)
    if not n:
      return
    self.names.add(batch)
    cols = batch.columns
    qid, text = cols[self.columns.query_id], cols[self.columns.query]
    pid, raw = cols[self.columns.product_id], cols[self.columns.label]
    # The first failing check of each row (0: all passed so far).
    reason = np.zeros(n, np.int8)
    reason[list(batch.errors)] = 1
    empty = _np(pc.or_(pc.equal(qid, ""), pc.equal(text, "")))
    reason[(reason == 0) & empty] = 2
    label = _labels(raw)
    reason[(reason == 0) & (label < 0)] = 3
    product = self.products.rows(pid)
    reason[(reason == 0) & (product < 0)] = 4
    other = self._other_split(pid, np.flatnonzero(reason == 4))
    reason[list(other)] = 5
    # A string cell of row i, for the culprits.
    cell = lambda col, i: col[i].as_py()
    unreadable = np.flatnonzero(reason == 1)
    undecodable = np.array([tables.error_reason(batch.errors[i]) ==
                            UNDECODABLE for i in unreadable.tolist()], bool)
    for why, rows in ((MALFORMED, unreadable[~undecodable]),
                      (UNDECODABLE, unreadable[undecodable])):
      self._culprits(batch, why, rows, lambda i: batch.errors[i])
    self._culprits(batch, EMPTY, np.flatnonzero(reason == 2),
                   lambda i: f"query_id {cell(qid, i)!r}")
    self._culprits(batch, BAD_LABEL, np.flatnonzero(reason == 3),
                   lambda i: f"label {cell(raw, i)!r}")
    self._culprits(batch, UNKNOWN, np.flatnonzero(reason == 4),
                   lambda i: f"product_id {cell(pid, i)!r}")
    self._culprits(batch, OTHER_SPLIT, np.flatnonzero(reason == 5),
                   lambda i: f"product {cell(pid, i)} is in the {other[i]} "
                   "split")

    rows = np.flatnonzero(reason == 0)
    del reason, empty
    q, differs = self._queries(qid.take(rows), text.take(rows))
    self._culprits(
        batch, TEXT_DIFFERS, rows[differs],
        lambda i: (f"query_id {cell(qid, i)}: {cell(text, i)!r} vs "
                   f"{self.queries[self.qindex[cell(qid, i)]]!r}"))
    rows, q = rows[~differs], q[~differs]
    p = product[rows].astype(np.int32)
    self.parts.append((batch.start, q, p, label[rows], rows.astype(np.int32)))

  def _other_split(self, pid, rows: np.ndarray) -> dict[int, str]:
    """Of `rows` (products unknown to the catalog), those the whole catalog
    has -> the split they are in (Python per such row: bad rows)."""
    if self.whole is None or not len(rows):
      return {}
    if self._whole_products is None:
      self._whole_products = ProductIndex(self.whole)
    found = self._whole_products.rows(pid.take(rows))
    return {int(i): self.whole.split[int(w)]
            for i, w in zip(rows[found >= 0], found[found >= 0])}

  def _queries(self, qid, text) -> tuple[np.ndarray, np.ndarray]:
    """-> (int32 (N,) query index of each row, bool (N,) its text differs
    from its query's). New query ids are registered in order of first
    appearance, with the text of their first row (Python per distinct id)."""
    if not len(qid):
      return np.zeros((0,), np.int32), np.zeros((0,), bool)
    enc = pc.dictionary_encode(qid)  # Ids in order of first appearance,
    codes = _np(enc.indices)         # so a row brings a new code when its
    first = np.flatnonzero(np.diff(  # code tops the codes before it.
        np.maximum.accumulate(codes), prepend=-1) > 0)
    new = []
    index = np.empty(len(enc.dictionary), np.int32)
    for k, u in enumerate(enc.dictionary.to_pylist()):
      g = self.qindex.get(u)
      if g is None:
        g = self.qindex[u] = len(self.query_ids)
        self.query_ids.append(u)
        new.append(first[k])
      index[k] = g
    self.queries.extend(text.take(np.asarray(new, np.int64)).to_pylist())
    # Compare text codes: where in this batch's texts each id's text is.
    texts = pc.dictionary_encode(text)
    canon = pc.index_in(pa.array([self.queries[g] for g in index.tolist()],
                                 pa.string()), value_set=texts.dictionary)
    canon = _np(pc.fill_null(canon, -1))
    return index[codes], canon[codes] != _np(texts.indices)

  def finish(self, name: str) -> Relevance:
    bad, ids = self.bad, self.catalog.ids
    # Joined part by part, so the parts and the whole never coexist.
    sizes = [len(part[1]) for part in self.parts]
    offsets = np.cumsum([0] + sizes)
    starts = [part[0] for part in self.parts]
    q, p, local = (np.empty(offsets[-1], np.int32) for _ in range(3))
    label = np.empty(offsets[-1], np.int8)
    for k, a, b in zip(range(len(sizes)), offsets[:-1], offsets[1:]):
      _, q[a:b], p[a:b], label[a:b], local[a:b] = self.parts[k]
      self.parts[k] = None
    self.parts = []
    # Pair i came from record starts[b] + local[i] of its batch b.
    record = lambda i: (starts[np.searchsorted(offsets, i, "right") - 1]
                        + int(local[i]))
    keep = ~_later_duplicates(q, p, len(ids))
    dups = np.flatnonzero(~keep)
    self.counts[DUPLICATE] += len(dups)
    for i in dups[:bad.max_culprits]:
      self.culprits.append((record(i), DUPLICATE, self.names(record(i)),
                            f"{self.query_ids[q[i]]}, {ids[p[i]]}"))
    # Bad rows reach BadRecords in row order, as a row-by-row loop would
    # meet them; past the named ones only counts are kept.
    named = collections.Counter()
    for _, reason, where, detail in sorted(self.culprits,
                                           key=lambda c: c[0]):
      if named[reason] < bad.max_culprits:
        named[reason] += 1
        bad.bad(where, reason, detail)
    for reason, n in self.counts.items():
      if n > named[reason]:
        bad.counts[reason] += n - named[reason]
        bad.seen += n - named[reason]
    bad.ok(int(keep.sum()))
    if not keep.any():
      raise br.BadDataError(
          f"{name}: no usable relevance rows. {bad.summary()}")
    bad.check()
    if not keep.all():
      q, p, label = q[keep], p[keep], label[keep]
    return Relevance(
        name=name, query_ids=self.query_ids, queries=self.queries,
        query=q, product=p, label=label, num_products=len(ids), bad=bad)


def _later_duplicates(q: np.ndarray, p: np.ndarray, num_products: int,
                      chunk: int = 1 << 20) -> np.ndarray:
  """bool (M,): pair i repeats an earlier (q, p) pair.

  The pair keys q * P + p are sorted in place to find the keys that repeat
  (usually none); only the pairs with such a key are argsorted (stably, so
  the first of each run keeps its pair). Memory: 8 bytes a pair, not the 24
  of an argsort of all keys.
  """
  def keys(a, b):
    return q[a:b].astype(np.int64) * num_products + p[a:b]
  key = keys(0, len(q))
  key.sort()
  repeated = np.unique(key[1:][key[1:] == key[:-1]])
  del key
  later = np.zeros(len(q), bool)
  if not len(repeated):
    return later
  for a in range(0, len(q), chunk):  # Pairs with a repeated key.
    k = keys(a, a + chunk)
    at = np.minimum(np.searchsorted(repeated, k), len(repeated) - 1)
    later[a:a + chunk] = repeated[at] == k
  rows = np.flatnonzero(later)
  k = q[rows].astype(np.int64) * num_products + p[rows]
  order = np.argsort(k, kind="stable")
  k = k[order]
  later[:] = False
  later[rows[order[1:][k[1:] == k[:-1]]]] = True
  return later


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
      ints = _np(ids.cast(pa.int64()))
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
      return lut[_np(enc.indices)]
    # Other text cannot equal the decimal text of a catalog id.
    ok = _np(pc.match_substring_regex(pid, self._INT))
    value = np.zeros(len(pid), np.int64)
    value[ok] = _np(pid.filter(pa.array(ok)).cast(pa.int64()))
    if self.table is not None:
      slot = value - self.low
      slot[~ok | (slot < 0) | (slot >= len(self.table))] = len(self.table) - 1
      return self.table[slot]
    at = np.minimum(np.searchsorted(self.ints, value), len(self.ints) - 1)
    found = ok & (self.ints[at] == value)
    return np.where(found, self.rows_of[at], -1)


def _np(array) -> np.ndarray:
  return array.to_numpy(zero_copy_only=False)


def _labels(raw) -> np.ndarray:
  """int8 (N,) label of each text cell, -1 where not one of LABELS: `int()`
  judges each distinct text once."""
  enc = pc.dictionary_encode(raw)
  lut = np.full(len(enc.dictionary) + 1, -1, np.int8)
  for k, v in enumerate(enc.dictionary.to_pylist()):
    try:
      label = int(v)
    except ValueError:
      continue
    if label in LABELS:
      lut[k] = label
  return lut[_np(pc.fill_null(enc.indices, len(enc.dictionary)))]


def load_relevance(
    path: str,
    catalog: catalog_lib.Catalog,
    columns: RelevanceColumns = RelevanceColumns(),
    *,
    max_bad_fraction: float = 0.01,
    shard: tuple[int, int] = (0, 1),
    whole: catalog_lib.Catalog | None = None,
) -> Relevance:
  """Reads `query_id, query, product_id, label` rows (CSV or Parquet).

  Args:
    path: e.g. ".../fashion/relevance_train.csv", or a table directory that
      `python -m dashclip_jax.data.prepare` wrote (e.g. ".../relevance_train").
    catalog: products the rows must name (e.g. `catalog.subset("train")`);
      rows naming any other product are skipped as "unknown product".
    columns: column mapping (of a CSV or Parquet file).
    max_bad_fraction: above this fraction of skipped rows, raise BadDataError.
    shard: (index, count): only the queries of this shard, for `count`
      processes that split the queries. From a prepared directory only the
      shard files of this process are read (files index, index + count, ...);
      a CSV or Parquet file is read whole and its queries kept by
      `query_shards(query_ids, count) == index` (the same split when `count`
      divides the prepared shard count).
    whole: the catalog of all splits, when `catalog` is one of them: rows
      naming a product of another split are skipped as OTHER_SPLIT, named
      with the split they are in (see `relevance_from_batches`).
  """
  index, count = shard
  if not 0 <= index < count:
    raise ValueError(f"shard={shard}: want 0 <= index < count")
  if os.path.isdir(path):
    from dashclip_jax.data import prepare  # pylint: disable=g-import-not-at-top
    return prepare.read_relevance(path, catalog, shard=shard,
                                  max_bad_fraction=max_bad_fraction)
  names = dataclasses.astuple(columns)
  tables.require_columns(path, tables.read_header(path), names)
  rel = tables.with_column_batches(
      path, names, lambda batches: relevance_from_batches(
          batches, catalog, name=path, columns=columns,
          max_bad_fraction=max_bad_fraction, whole=whole))
  if count == 1:
    return rel
  return rel.take_queries(
      np.flatnonzero(query_shards(rel.query_ids, count) == index),
      f"shard {index} of {count}")


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
