"""The prepared data format (what `python -m dashclip_jax.data.prepare`
writes, see prepare.py): its manifest, the validated catalog as one Parquet
file and each relevance table as query-sharded Parquet files; writers and
readers. `catalog_tables.load_catalog` and
`relevance_tables.load_relevance` read a prepared directory through it."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dashclip_jax.data import bad_records as br
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import column_batches
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.runtime import manifests


FORMAT = "dashclip_jax.prepared/1"


MANIFEST = "manifest.json"


CATALOG = "catalog.parquet"


QUERIES = "queries.parquet"


def source_info(path: str) -> dict[str, Any]:
  """Path, size and sha256 of a source file (read in 16 MB chunks)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 24):
      digest.update(chunk)
  return {"path": os.path.abspath(path), "size": os.path.getsize(path),
          "sha256": digest.hexdigest()}


def _skips(bad: br.BadRecords | None) -> dict[str, Any]:
  if bad is None:
    return {"seen": 0, "dropped": {}, "first_culprits": []}
  return {"seen": bad.seen, "dropped": dict(sorted(bad.counts.items())),
          "first_culprits": list(bad.culprits)}


def write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
    f.write("\n")
  os.replace(tmp, path)


def is_prepared(directory: str) -> bool:
  """Whether `directory` was written by prepare.prepare (other tools, e.g. a
  curation run's `expanded/`, keep a manifest.json of their own)."""
  try:
    _read_manifest(directory)
  except (OSError, ValueError, AttributeError):  # Absent, not JSON, other.
    return False
  return True


def _read_manifest(directory: str) -> dict[str, Any]:
  return manifests.read(directory, MANIFEST, "format", FORMAT,
                        "not a directory written by python -m "
                        "dashclip_jax.data.prepare")


def write_catalog(catalog: catalog_lib.Catalog, out: str,
                  root: str | None) -> dict[str, Any]:
  """Writes `catalog` as out/catalog.parquet -> its manifest entry."""
  names = np.array(catalog.category_names + [""], dtype=object)
  cols = {
      "id": pa.array(catalog.ids, pa.string()),
      "title": pa.array(catalog.titles, pa.string()),
      "category": pa.array(names[np.asarray(catalog.category)].tolist(),
                           pa.string()),
      "split": pa.array(catalog.split, pa.string()),
      "where": pa.array(catalog.where, pa.string()),
  }
  images = list(catalog.images)
  if images and isinstance(images[0], (bytes, bytearray, memoryview)):
    cols["image_bytes"] = pa.array([bytes(i) for i in images], pa.binary())
    root = None
  else:
    root = os.path.realpath(root)
    paths = pa.array(images, pa.string())
    prefix = os.path.join(root, "")
    if pc.all(pc.starts_with(paths, prefix)).as_py() is not False:
      # Resolved under the root: strip it (str slicing, not per-row relpath).
      cols["image"] = pa.array([i[len(prefix):] for i in images], pa.string())
    else:
      cols["image"] = pa.array([os.path.relpath(i, root) for i in images],
                               pa.string())
  for k, v in catalog.attributes.items():
    cols[f"attribute.{k}"] = pa.array(v, pa.string())
  pq.write_table(pa.table(cols), os.path.join(out, CATALOG))
  return {"file": CATALOG, "rows": len(catalog), "root": root,
          "columns": list(cols), "category_names": catalog.category_names,
          **_skips(catalog.bad)}


def read_catalog(directory: str) -> catalog_lib.Catalog:
  """The catalog of a prepared directory (no validation: prepare.prepare
  did it)."""
  manifest = _read_manifest(directory)["catalog"]
  path = os.path.join(directory, manifest["file"])
  table = pq.read_table(path)
  names = manifest["category_names"]
  category = pc.fill_null(pc.index_in(table.column("category"),
                                      pa.array(names, pa.string())), -1)
  if manifest["root"] is None:
    images = table.column("image_bytes").to_pylist()
  else:
    images = pc.binary_join_element_wise(
        os.path.join(manifest["root"], ""), table.column("image"),
        "").to_pylist()
  bad = br.BadRecords(f"catalog {manifest['source']['path']}")
  bad.set_state({"seen": manifest["seen"], "counts": manifest["dropped"],
                 "culprits": manifest["first_culprits"]})
  prefix = "attribute."
  return catalog_lib.Catalog(
      name=path, ids=table.column("id").to_pylist(),
      titles=table.column("title").to_pylist(),
      category=category.to_numpy().astype(np.int32), category_names=names,
      split=table.column("split").to_pylist(), images=images,
      where=table.column("where").to_pylist(),
      attributes={c[len(prefix):]: table.column(c).to_pylist()
                  for c in table.column_names if c.startswith(prefix)},
      bad=bad)


def shard_name(index: int, count: int) -> str:
  return f"part-{index:05d}-of-{count:05d}.parquet"


def write_relevance(rel: relevance_lib.Relevance, out: str,
                    num_shards: int) -> dict[str, Any]:
  """Writes `rel` as query-hash shards; its product indices are rows of the
  catalog `write_catalog` wrote beside `out`."""
  os.makedirs(out, exist_ok=True)
  for f in os.listdir(out):  # Shards of an earlier run.
    if f.startswith("part-") and f.endswith(".parquet"):
      os.remove(os.path.join(out, f))
  pq.write_table(pa.table({
      "query_id": pa.array(rel.query_ids, pa.string()),
      "query": pa.array(rel.queries, pa.string())}),
                 os.path.join(out, QUERIES))
  table = pa.table({
      "query": pa.array(rel.query, pa.int32()),
      "product": pa.array(rel.product, pa.int32()),
      "label": pa.array(rel.label, pa.int8()),
      "pair": pa.array(np.arange(len(rel), dtype=np.int64)),
  })
  shard = relevance_lib.query_shards(rel.query_ids, num_shards)[rel.query]
  order = np.argsort(shard, kind="stable")
  bounds = np.searchsorted(shard[order], np.arange(num_shards + 1))
  files, rows = [], []
  for i in range(num_shards):
    files.append(shard_name(i, num_shards))
    rows.append(int(bounds[i + 1] - bounds[i]))
    # Row groups of 256K pairs bound what a reader decodes at once.
    pq.write_table(table.take(order[bounds[i]:bounds[i + 1]]),
                   os.path.join(out, files[-1]), row_group_size=1 << 18)
  return {"rows": len(rel), "queries": rel.num_queries,
          "num_shards": num_shards, "shards": files, "rows_per_shard": rows,
          "queries_file": QUERIES, "catalog": os.path.join("..", CATALOG),
          "columns": table.column_names,
          **_skips(rel.bad)}


def shard_count(directory: str) -> int:
  """How many shard files a prepared table has (prepare's --num_shards)."""
  return int(_read_manifest(directory)["num_shards"])


def read_relevance(directory: str, catalog: catalog_lib.Catalog, *,
                   shard: tuple[int, int] = (0, 1),
                   max_bad_fraction: float = 0.01
                   ) -> relevance_lib.Relevance:
  """Pairs of shard files index, index + count, ... of a prepared table.

  Pairs come in table order and queries in order of first appearance, so
  reading every shard equals loading the source; products not in `catalog`
  are skipped as "unknown product" (culprits named by shard file and row).
  """
  return read_shard(directory, catalog, shard=shard,
                    max_bad_fraction=max_bad_fraction, with_pairs=False)[0]


def read_shard(directory: str, catalog: catalog_lib.Catalog, *,
               shard: tuple[int, int], max_bad_fraction: float = 0.01,
               with_pairs: bool = True
               ) -> tuple[relevance_lib.Relevance, np.ndarray | None]:
  """-> (`read_relevance`, int64 (M,) each pair's place in the whole table
  or None without `with_pairs`). The places order the pairs of several
  shards (e.g. every process's held-out queries) back into table order."""
  index, count = shard
  manifest = _read_manifest(directory)
  # Rows of the prepared catalog -> rows of `catalog` (-1: not in it).
  prepared_ids = pq.read_table(
      os.path.join(directory, manifest["catalog"]), columns=["id"]).column(0)
  row_in_catalog = relevance_lib.ProductIndex(catalog).rows(
      prepared_ids.combine_chunks())
  files = manifest["shards"][index::count]
  names = [os.path.join(os.path.basename(directory), f) for f in files]
  readers = [pq.ParquetFile(os.path.join(directory, f)) for f in files]

  def column(c: str, dtype) -> np.ndarray:
    """Column `c` of this process's files, one column in memory at a time."""
    return np.concatenate([np.zeros(0, dtype)] + [
        r.read(columns=[c]).column(0).to_numpy() for r in readers]).astype(
            dtype, copy=False)
  pair = column("pair", np.int64)
  offsets = np.cumsum([0] + [r.metadata.num_rows for r in readers])
  # Table order: each file is in order already, so the sort merges runs
  # (and one file needs none).
  order = (None if np.all(pair[1:] > pair[:-1])
           else np.argsort(pair, kind="stable"))
  in_order = lambda a: a if order is None else a[order]
  pair = in_order(pair) if with_pairs else None
  q = in_order(column("query", np.int32))
  label = in_order(column("label", np.int8))
  prepared = in_order(column("product", np.int32))
  p = row_in_catalog.astype(np.int32)[prepared]
  name = directory + (f" [shard {index} of {count}]" if count > 1 else "")

  def where(i: int) -> str:
    k = i if order is None else int(order[i])
    f = int(np.searchsorted(offsets, k, "right")) - 1
    return f"{names[f]} row {k - int(offsets[f])}"

  def detail(i: int, _) -> str:
    return f"product_id {prepared_ids[int(prepared[i])].as_py()!r}"

  bad = br.BadRecords(f"relevance {name}", max_bad_fraction=max_bad_fraction)
  column_batches.report_bad(bad, [relevance_lib.UNKNOWN],
                            (p < 0).astype(np.int8), detail, where)
  keep = p >= 0
  if not keep.any():
    raise br.BadDataError(f"{name}: no usable relevance rows. "
                          f"{bad.summary()}")
  bad.check()
  if not keep.all():
    q, p, label = q[keep], p[keep], label[keep]
    pair = None if pair is None else pair[keep]
  # Renumber this shard's queries in order of first appearance. The table
  # numbers queries so, hence with no pair dropped that is ascending order.
  first = np.full(manifest["queries"], len(q), np.int64)
  if keep.all():
    first[q] = 0
    kept = np.flatnonzero(first == 0)
  else:
    np.minimum.at(first, q, np.arange(len(q)))
    kept = np.flatnonzero(first < len(q))
    kept = kept[np.argsort(first[kept], kind="stable")]
  new = np.full(manifest["queries"], -1, np.int32)
  new[kept] = np.arange(len(kept))
  queries = pq.read_table(os.path.join(directory, manifest["queries_file"]))
  sel = pa.array(kept)
  return relevance_lib.Relevance(
      name=name, query_ids=queries.column("query_id").take(sel).to_pylist(),
      queries=queries.column("query").take(sel).to_pylist(),
      query=new[q], product=p, label=label, num_products=len(catalog),
      bad=bad), pair
