"""Labelling at scale: sharded, resumable Parquet output, and the expanded
set stage 2 reads.

Pairs are cut into shards of `shard_size` rows in a fixed order; process p
of n labels shards s with s % n == p, each in batches through the labeler,
and writes `part-SSSSS-of-NNNNN.parquet` to a temporary name first, then
renames it: a file under its final name is complete, so a restarted job
skips it (and nothing else). `labels.json` records what the shards were
made from (teacher, pairs, shard size): a rerun with another teacher or
other pairs stops instead of mixing them.

Rows: query_id, query, product_id, label (argmax), p0, p1, p2,
label_source ("seed" | "teacher"), teacher_id. A pair the labeler returns
a NaN row for (it could not label it) is left out of its shard, counted.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from tqdm import auto as tqdm

from dashclip_jax.curation.labelers import interface as labeler_lib
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.runtime.config_files import ConfigError

log = logging.getLogger("dashclip_jax")

SCHEMA = pa.schema([
    ("query_id", pa.string()), ("query", pa.string()),
    ("product_id", pa.string()), ("label", pa.int8()),
    ("p0", pa.float32()), ("p1", pa.float32()), ("p2", pa.float32()),
    ("label_source", pa.string()), ("teacher_id", pa.string())])
MANIFEST = "labels.json"
CSV_NAME = "relevance_train.csv"  # What stage 2's relevance reader reads.


def shard_name(index: int, count: int) -> str:
  return f"part-{index:05d}-of-{count:05d}.parquet"


def pairs_digest(query_ids: Sequence[str], product_ids: Sequence[str],
                 chunk: int = 1 << 20) -> str:
  """sha256 of "query_id\tproduct_id\n" for every pair, in order: each
  chunk's lines are joined by arrow, and its value buffer hashed whole."""
  h = hashlib.sha256()
  for lo in range(0, len(query_ids), chunk):
    pairs = pc.binary_join_element_wise(
        pa.array(query_ids[lo:lo + chunk], pa.string()),
        pa.array(product_ids[lo:lo + chunk], pa.string()), "\t")
    lines = pc.binary_join_element_wise(pairs, "", "\n")  # "q\tp\n"
    offsets = np.frombuffer(lines.buffers()[1], np.int32,
                            len(lines) + 1, lines.offset * 4)
    data = lines.buffers()[2]
    h.update(memoryview(data)[offsets[0]:offsets[-1]])
  return h.hexdigest()


def check_manifest(out_dir: str, want: dict, *, name: str = MANIFEST,
                   what: str = "labels made") -> None:
  """Stops when `out_dir/name` records other settings than `want`, so a
  rerun never mixes its shards with another run's; writes it (process 0)
  when absent."""
  path = os.path.join(out_dir, name)
  if os.path.isfile(path):
    with open(path) as f:
      have = json.load(f)
    changed = sorted(k for k in want if have.get(k) != want[k])
    if changed:
      raise ConfigError(
          f"{out_dir} holds {what} with other {', '.join(changed)} "
          f"({', '.join(f'{k}: {have.get(k)!r}' for k in changed)}); use "
          "another workdir or remove that directory to redo them")
    return
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(want, f, indent=2)
    os.replace(tmp, path)


def _progress(total: int, initial: int, enabled: bool, desc: str):
  return tqdm.tqdm(total=total, initial=initial, unit="pair",
                   desc=desc, disable=not enabled,
                   smoothing=0.1, mininterval=2.0)


def label_pairs(labeler: labeler_lib.Labeler, catalog: catalog_lib.Catalog,
                query_ids: Sequence[str], queries: Sequence[str],
                products: np.ndarray, out_dir: str, *, shard_size: int,
                batch_size: int, progress: bool = True,
                process_index: int | None = None,
                process_count: int | None = None,
                before_commit: Callable[[int, str], Any] | None = None
                ) -> list[str]:
  """Labels (query_ids[i], queries[i], catalog row products[i]) pairs into
  Parquet shards in `out_dir`; -> every shard's path, in order.

  This process labels only its share and only the shards not yet written.
  `before_commit(shard, tmp_path)` runs after a shard is written under its
  temporary name and before the rename (tests kill the job there).
  """
  if shard_size < 1 or batch_size < 1:
    raise ConfigError(f"label.shard_size ({shard_size}) and "
                      f"label.batch_size ({batch_size}) must be >= 1")
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  n = len(products)
  num_shards = max(1, -(-n // shard_size))
  product_ids = np.asarray(catalog.ids, object)[np.asarray(products, np.int64)]
  os.makedirs(out_dir, exist_ok=True)
  check_manifest(out_dir, {
      "teacher_id": labeler.teacher_id, "pairs": n,
      "pairs_sha256": pairs_digest(query_ids, product_ids),
      "shard_size": shard_size, "num_shards": num_shards})
  paths = [os.path.join(out_dir, shard_name(s, num_shards))
           for s in range(num_shards)]
  bounds = lambda s: (s * shard_size, min((s + 1) * shard_size, n))
  mine = [s for s in range(num_shards) if s % count == index]
  for s in mine:  # A killed job's half-written shards.
    for tmp in glob.glob(paths[s] + ".tmp*"):
      os.remove(tmp)
  todo = [s for s in mine if not os.path.isfile(paths[s])]
  size = lambda ss: sum(bounds(s)[1] - bounds(s)[0] for s in ss)
  if len(todo) < len(mine):
    log.info("labelling %s: %d of this process's %d shards already written, "
             "skipped", out_dir, len(mine) - len(todo), len(mine))
  bar = _progress(size(mine), size(mine) - size(todo), progress,
                  f"labelling {os.path.basename(out_dir)}")
  records = {}
  try:
    for s in todo:
      lo, hi = bounds(s)
      probs = []
      for start in range(lo, hi, batch_size):
        rows = range(start, min(start + batch_size, hi))
        for p in {int(products[i]) for i in rows} - records.keys():
          records[p] = labeler_lib.product_record(catalog, p)
        probs.append(labeler.predict([queries[i] for i in rows],
                                     [records[int(products[i])]
                                      for i in rows]))
        bar.update(len(rows))
      probs = np.concatenate(probs).astype(np.float32)
      table = _rows(query_ids[lo:hi], queries[lo:hi], product_ids[lo:hi],
                    probs, "teacher", labeler.teacher_id)
      unlabelled = ~np.isfinite(probs).all(1)  # The labeler's NaN rows.
      if unlabelled.any():
        log.warning("shard %d: %d pairs the labeler could not label, "
                    "skipped", s, unlabelled.sum())
        table = table.filter(pa.array(~unlabelled))
      tmp = f"{paths[s]}.tmp{os.getpid()}"
      pq.write_table(table, tmp)
      if before_commit is not None:
        before_commit(s, tmp)
      os.replace(tmp, paths[s])
      if len(records) > 100_000:  # Bounded: products recur within a shard.
        records.clear()
  finally:
    bar.close()
  return paths


def _rows(query_ids, queries, product_ids, probs: np.ndarray, source: str,
          teacher_id: str) -> pa.Table:
  """Label rows; the id and text columns are sequences or arrow arrays."""
  n = len(query_ids)
  return pa.table({
      "query_id": query_ids, "query": queries, "product_id": product_ids,
      "label": probs.argmax(1).astype(np.int8),
      "p0": probs[:, 0], "p1": probs[:, 1], "p2": probs[:, 2],
      "label_source": pa.repeat(pa.scalar(source, pa.string()), n),
      "teacher_id": pa.repeat(pa.scalar(teacher_id, pa.string()), n),
  }, schema=SCHEMA)


def read_shards(paths: Sequence[str]) -> pa.Table:
  """The shards' rows, in shard order; a missing shard raises."""
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f"{len(missing)} label shards not written yet, "
                            f"e.g. {missing[0]}: rerun the labelling")
  tables = [pq.read_table(p, schema=SCHEMA) for p in paths]
  return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def seed_rows(seed: relevance_lib.Relevance,
              catalog: catalog_lib.Catalog) -> pa.Table:
  """The seed labels as rows: probabilities one-hot, no teacher."""
  probs = np.eye(labeler_lib.NUM_LABELS, dtype=np.float32)[
      seed.label.astype(np.int64)]
  query = np.asarray(seed.query, np.int64)
  take = lambda values, index: pa.array(values, pa.string()).take(index)
  return _rows(take(seed.query_ids, query), take(seed.queries, query),
               take(catalog.ids, np.asarray(seed.product, np.int64)), probs,
               "seed", "")


def confident(table: pa.Table, threshold: float,
              label: int | None = None) -> pa.Table:
  """Rows whose top probability is >= threshold (and, if given, whose
  label is `label`)."""
  probs = np.stack([table[c].to_numpy() for c in ("p0", "p1", "p2")], 1)
  keep = probs.max(1) >= threshold
  if label is not None:
    keep &= table["label"].to_numpy() == label
  return table.filter(pa.array(keep))


def product_aisles(catalog: catalog_lib.Catalog, field: str) -> dict[str, str]:
  """product id -> its aisle: the catalog column `field`, or its aisle
  category for "category"."""
  if field == "category":
    names = catalog.category_names
    values = [names[c] if c >= 0 else "" for c in np.asarray(catalog.category)]
  elif field in catalog.attributes:
    values = catalog.attributes[field]
  else:
    raise ConfigError(
        f"label.aisle_field: {field!r} is not a column of {catalog.name} "
        f"(it has: category, {', '.join(sorted(catalog.attributes))})")
  return dict(zip(catalog.ids, values))


def aisle_consistent(table: pa.Table, aisle_of: Mapping[str, str]
                     ) -> tuple[pa.Table, int]:
  """Rows labelled 1 or 2 for a query, in an aisle where none of that
  query's label-2 rows is, relabelled 0; -> (table, how many).

  Why: audited on the fashion pool (bench/teacher_pool_audit.py), the
  teacher calls most products of another type that match the query's
  colour, gender or brand "moderately relevant" (their true label is 0),
  and confidently; a query's highly relevant products show which aisles
  it means. A query with no label-2 row is left as it is. Vectorised over
  the rows (integer codes, np.isin), no per-row Python.
  """
  if not len(table):
    return table, 0
  query = pc.dictionary_encode(table["query_id"]).combine_chunks()
  query = query.indices.to_numpy().astype(np.int64)
  products = pc.dictionary_encode(table["product_id"]).combine_chunks()
  aisles = pc.dictionary_encode(pa.array(
      [aisle_of.get(p, "") for p in products.dictionary.to_pylist()]))
  aisle = aisles.indices.to_numpy()[products.indices.to_numpy()]
  key = query * len(aisles.dictionary) + aisle  # One int per (query, aisle).
  label = table["label"].to_numpy().copy()
  high = label == 2
  has_high = np.zeros(query.max() + 1, bool)
  has_high[query[high]] = True
  demote = (label > 0) & has_high[query] & ~np.isin(key, key[high])
  label[demote] = 0
  column = table.schema.get_field_index("label")
  return (table.set_column(column, "label", pa.array(label, pa.int8())),
          int(demote.sum()))


def expanded(tables: Sequence[pa.Table]) -> pa.Table:
  """Concatenation without repeated (query_id, product_id) pairs: the first
  table that has a pair wins (seed before teacher rows), and within a
  table its first row; rows keep their order."""
  if not tables:
    return SCHEMA.empty_table()
  table = pa.concat_tables(tables)
  keys = pa.table({"query_id": table["query_id"],
                   "product_id": table["product_id"],
                   "row": np.arange(len(table), dtype=np.int64)})
  first = keys.group_by(["query_id", "product_id"], use_threads=False
                        ).aggregate([("row", "min")])["row_min"].to_numpy()
  return table.take(np.sort(first))


def write_expanded(table: pa.Table, out_dir: str, manifest: dict) -> str:
  """Writes `out_dir/relevance_train.csv` (query_id, query, product_id,
  label: what `data.relevance.load_relevance` reads, and stage 2 with
  `data.relevance_train_path=out_dir`), `rows.parquet` (every column) and
  `manifest.json`; -> the CSV's path. Each file lands by rename."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, CSV_NAME)
  pa_csv.write_csv(table.select(["query_id", "query", "product_id", "label"]),
                   path + ".tmp",
                   pa_csv.WriteOptions(quoting_style="needed"))
  os.replace(path + ".tmp", path)
  parquet = os.path.join(out_dir, "rows.parquet")
  pq.write_table(table, parquet + ".tmp")
  os.replace(parquet + ".tmp", parquet)
  with open(os.path.join(out_dir, "manifest.json.tmp"), "w") as f:
    json.dump(manifest, f, indent=2, default=str)
  os.replace(os.path.join(out_dir, "manifest.json.tmp"),
             os.path.join(out_dir, "manifest.json"))
  return path
