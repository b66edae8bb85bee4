"""Relevance read from CSV/Parquet tables (query_id, query, product_id,
label) over a catalog: judged a column batch at a time with pyarrow/numpy,
bad rows skipped and counted with their reasons and lines (Python per
distinct query id and per culprit, never per good row)."""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dashclip_jax.data import bad_records as br
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import column_batches
from dashclip_jax.data import prepared
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import tables
from dashclip_jax.data.column_batches import to_numpy


def relevance_from_rows(
    rows: Iterable[tables.Row],
    catalog: catalog_lib.Catalog,
    *,
    name: str,
    columns: relevance_lib.RelevanceColumns = relevance_lib.RelevanceColumns(),
    header: Sequence[str] | None = None,
    max_bad_fraction: float = 0.01,
) -> relevance_lib.Relevance:
  """Validates (where, row, error) triples against `catalog`."""
  if header is not None:
    tables.require_columns(name, header, dataclasses.astuple(columns))
  return relevance_from_batches(
      column_batches.rows_to_batches(rows, dataclasses.astuple(columns)),
      catalog, name=name, columns=columns, max_bad_fraction=max_bad_fraction)


# Why a row is skipped, in the order the checks judge a row.
UNDECODABLE = tables.UNDECODABLE  # Bytes that are not UTF-8: any check.


# Judged where relevance.UNKNOWN is: a product of the whole catalog, in
# another split.
OTHER_SPLIT = "product in another split"


def relevance_from_batches(
    batches: Iterable[column_batches.ColumnBatch],
    catalog: catalog_lib.Catalog,
    *,
    name: str,
    columns: relevance_lib.RelevanceColumns = relevance_lib.RelevanceColumns(),
    max_bad_fraction: float = 0.01,
    whole: catalog_lib.Catalog | None = None,
) -> relevance_lib.Relevance:
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

  def __init__(self, catalog: catalog_lib.Catalog,
               columns: relevance_lib.RelevanceColumns, bad: br.BadRecords,
               whole: catalog_lib.Catalog | None = None):
    self.catalog, self.columns, self.bad = catalog, columns, bad
    self.products = relevance_lib.ProductIndex(catalog)
    self.whole, self._whole_products = whole, None
    self.qindex: dict[str, int] = {}
    self.query_ids: list[str] = []
    self.queries: list[str] = []
    # Per batch: (start, query, product, label, row in batch) of rows passing.
    self.parts = []
    self.counts = collections.Counter()  # reason -> rows
    self.culprits = []  # (record, reason, where, detail), the first ones.
    self.names = column_batches.Names()

  def _culprits(self, batch, reason, rows, detail) -> None:
    """Counts `rows` (batch indices, ascending) and names the first ones."""
    self.counts[reason] += len(rows)
    for i in rows[:self.bad.max_culprits]:
      self.culprits.append((batch.start + int(i), reason, batch.where(int(i)),
                            detail(int(i))))

  def add(self, batch: column_batches.ColumnBatch) -> None:
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
    empty = to_numpy(pc.or_(pc.equal(qid, ""), pc.equal(text, "")))
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
    for why, rows in ((relevance_lib.MALFORMED, unreadable[~undecodable]),
                      (UNDECODABLE, unreadable[undecodable])):
      self._culprits(batch, why, rows, lambda i: batch.errors[i])
    self._culprits(batch, relevance_lib.EMPTY, np.flatnonzero(reason == 2),
                   lambda i: f"query_id {cell(qid, i)!r}")
    self._culprits(batch, relevance_lib.BAD_LABEL, np.flatnonzero(reason == 3),
                   lambda i: f"label {cell(raw, i)!r}")
    self._culprits(batch, relevance_lib.UNKNOWN, np.flatnonzero(reason == 4),
                   lambda i: f"product_id {cell(pid, i)!r}")
    self._culprits(batch, OTHER_SPLIT, np.flatnonzero(reason == 5),
                   lambda i: f"product {cell(pid, i)} is in the {other[i]} "
                   "split")

    rows = np.flatnonzero(reason == 0)
    del reason, empty
    q, differs = self._queries(qid.take(rows), text.take(rows))
    self._culprits(
        batch, relevance_lib.TEXT_DIFFERS, rows[differs],
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
      self._whole_products = relevance_lib.ProductIndex(self.whole)
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
    codes = to_numpy(enc.indices)         # so a row brings a new code when its
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
    canon = to_numpy(pc.fill_null(canon, -1))
    return index[codes], canon[codes] != to_numpy(texts.indices)

  def finish(self, name: str) -> relevance_lib.Relevance:
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
    self.counts[relevance_lib.DUPLICATE] += len(dups)
    for i in dups[:bad.max_culprits]:
      self.culprits.append((record(i), relevance_lib.DUPLICATE,
                            self.names(record(i)),
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
    return relevance_lib.Relevance(
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


def _labels(raw) -> np.ndarray:
  """int8 (N,) label of each text cell, -1 where not one of LABELS
  (relevance.py): `int()` judges each distinct text once."""
  enc = pc.dictionary_encode(raw)
  lut = np.full(len(enc.dictionary) + 1, -1, np.int8)
  for k, v in enumerate(enc.dictionary.to_pylist()):
    try:
      label = int(v)
    except ValueError:
      continue
    if label in relevance_lib.LABELS:
      lut[k] = label
  return lut[to_numpy(pc.fill_null(enc.indices, len(enc.dictionary)))]


def load_relevance(
    path: str,
    catalog: catalog_lib.Catalog,
    columns: relevance_lib.RelevanceColumns = relevance_lib.RelevanceColumns(),
    *,
    max_bad_fraction: float = 0.01,
    shard: tuple[int, int] = (0, 1),
    whole: catalog_lib.Catalog | None = None,
) -> relevance_lib.Relevance:
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
      `relevance.query_shards(query_ids, count) == index` (the same split
      when `count` divides the prepared shard count).
    whole: the catalog of all splits, when `catalog` is one of them: rows
      naming a product of another split are skipped as OTHER_SPLIT, named
      with the split they are in (see `relevance_from_batches`).
  """
  index, count = shard
  if not 0 <= index < count:
    raise ValueError(f"shard={shard}: want 0 <= index < count")
  if os.path.isdir(path):
    return prepared.read_relevance(path, catalog, shard=shard,
                                   max_bad_fraction=max_bad_fraction)
  names = dataclasses.astuple(columns)
  tables.require_columns(path, tables.read_header(path), names)
  rel = column_batches.with_column_batches(
      path, names, lambda batches: relevance_from_batches(
          batches, catalog, name=path, columns=columns,
          max_bad_fraction=max_bad_fraction, whole=whole))
  if count == 1:
    return rel
  return rel.take_queries(
      np.flatnonzero(relevance_lib.query_shards(rel.query_ids, count) == index),
      f"shard {index} of {count}")
