"""The exported index: Parquet + .npy embeddings keyed by id, a faiss index.

Layout of an export directory:
  products-<i>-of-<n>.parquet   part i of n (one per process, catalog order):
                     id (string), title (string), category (string),
                     embedding (fixed-size list<float32>, length E)
  products.npy       float32 (N, E), the parts' rows in order
  queries.parquet    id, text, embedding          (when queries are given)
  queries.npy        float32 (Q, E)
  products.faiss     faiss inner-product index over products.npy rows
  manifest.json      counts, dim, index kind, model checkpoint, files

Several processes export one catalog without gathering it: each embeds its
own rows and writes its part (`write_products_part`), then one process reads
the parts into the index and manifest (`finish_export`).
`export_embeddings` does both for one process (a single part).

Every row is finite: a NaN row would be indexed and then silently missing
from (or wrongly placed in) every search, so writers and `finish_export`
refuse non-finite rows with a one-line `NonFiniteEmbeddingError` naming
their ids.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
  import faiss

def _faiss():
  """faiss, imported on first use: its import logs to stderr and costs time
  that writing or reading the Parquet tables (`dashclip_jax.load`'s
  writers) never needs."""
  import faiss  # pylint: disable=g-import-not-at-top,redefined-outer-name
  return faiss


MANIFEST = "manifest.json"
INDEX_FILE = "products.faiss"


class NonFiniteEmbeddingError(ValueError):
  """Embedding rows with NaN or infinite values; the message names them."""


def check_finite(ids: Sequence[Any], emb: np.ndarray, what: str,
                 where: str = "", shown: int = 5) -> None:
  """NonFiniteEmbeddingError naming the ids of emb's non-finite rows.

  ids: N ids; emb: float (N, E); what: "product" or "query".
  """
  bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
  if not bad.size:
    return
  names = ", ".join(str(ids[i]) for i in bad[:shown])
  more = f" and {bad.size - shown} more" if bad.size > shown else ""
  raise NonFiniteEmbeddingError(
      f"{where + ': ' if where else ''}{bad.size} of {len(emb)} {what} "
      f"embeddings have NaN or infinite values ({what} ids {names}{more}); "
      "not exported: they would drop out of every search")


def part_file(part: int, num_parts: int) -> str:
  """products-00001-of-00004.parquet: part 1 of 4."""
  if not 0 <= part < num_parts:
    raise ValueError(f"part {part} is not in [0, {num_parts})")
  return f"products-{part:05d}-of-{num_parts:05d}.parquet"


def embedding_table(ids, texts, text_name, emb, extra=None) -> pa.Table:
  """The export's row layout: id, `text_name`, extra string columns, then
  embedding (fixed-size list<float32>); ids are written as str.
  Non-finite rows: NonFiniteEmbeddingError."""
  emb = np.asarray(emb, np.float32)
  if emb.ndim != 2:
    raise ValueError(f"{text_name} embeddings must be (N, E), got "
                     f"{emb.shape}")
  if len(ids) != len(emb) or len(texts) != len(emb):
    raise ValueError(f"{len(ids)} ids, {len(texts)} {text_name}s and "
                     f"{len(emb)} embeddings must match")
  check_finite(ids, emb, "product" if text_name == "title" else "query")
  cols = {"id": pa.array([str(i) for i in ids], pa.string()),
          text_name: pa.array(list(texts), pa.string())}
  for k, v in (extra or {}).items():
    cols[k] = pa.array(list(v), pa.string())
  # Fixed-size lists: readers get an (N, E) block without per-row offsets.
  cols["embedding"] = pa.FixedSizeListArray.from_arrays(
      pa.array(emb.reshape(-1), pa.float32()), emb.shape[1])
  return pa.table(cols)


def table_embeddings(table: pa.Table) -> np.ndarray:
  """float32 (N, E) from an `embedding_table`'s embedding column."""
  emb = table.column("embedding").combine_chunks()
  return emb.flatten().to_numpy().reshape(-1, emb.type.list_size)


def write_products_part(out_dir: str, part: int, num_parts: int,
                        product_ids: Sequence[str], titles: Sequence[str],
                        product_emb: np.ndarray, *,
                        categories: Sequence[str] | None = None) -> str:
  """Writes part `part` of `num_parts` of the product table -> its path."""
  os.makedirs(out_dir, exist_ok=True)
  extra = {"category": categories} if categories is not None else None
  path = os.path.join(out_dir, part_file(part, num_parts))
  pq.write_table(embedding_table(product_ids, titles, "title", product_emb,
                                 extra), path)
  return path


def write_queries(out_dir: str, query_ids: Sequence[str],
                  query_texts: Sequence[str], query_emb: np.ndarray) -> None:
  """queries.parquet and queries.npy."""
  os.makedirs(out_dir, exist_ok=True)
  pq.write_table(embedding_table(query_ids, query_texts, "text", query_emb),
                 os.path.join(out_dir, "queries.parquet"))
  np.save(os.path.join(out_dir, "queries.npy"),
          np.asarray(query_emb, np.float32))


def finish_export(out_dir: str, num_parts: int, *, index_kind: str = "hnsw",
                  checkpoint: str = "",
                  info: dict[str, Any] | None = None) -> str:
  """Reads the `num_parts` product parts into products.npy, the faiss index
  and the manifest (after every part is written)."""
  parts = [part_file(i, num_parts) for i in range(num_parts)]
  missing = [p for p in parts if not os.path.isfile(os.path.join(out_dir, p))]
  if missing:
    raise FileNotFoundError(f"{out_dir}: product part {missing[0]} is missing "
                            f"({len(missing)} of {num_parts})")
  table = pa.concat_tables(pq.read_table(os.path.join(out_dir, p))
                           for p in parts)
  ids = table.column("id").to_pylist()
  if len(set(ids)) != len(ids):
    raise ValueError("product ids must be unique to key the export")
  product_emb = table_embeddings(table)
  check_finite(ids, product_emb, "product", out_dir)  # Parts from elsewhere.
  # Parts of an earlier export into the same directory with another count.
  for f in os.listdir(out_dir):
    if f.startswith("products-") and f.endswith(".parquet") and (
        f not in parts):
      os.remove(os.path.join(out_dir, f))
  np.save(os.path.join(out_dir, "products.npy"), product_emb)
  _faiss().write_index(build_index(product_emb, kind=index_kind),
                    os.path.join(out_dir, INDEX_FILE))
  files = parts + ["products.npy", INDEX_FILE]
  num_queries = 0
  if os.path.isfile(os.path.join(out_dir, "queries.parquet")):
    num_queries = pq.read_metadata(os.path.join(
        out_dir, "queries.parquet")).num_rows
    files += ["queries.parquet", "queries.npy"]
  manifest = dict(num_products=len(product_emb), dim=product_emb.shape[1],
                  num_queries=num_queries, index=index_kind,
                  metric="inner_product",
                  checkpoint=os.path.abspath(checkpoint) if checkpoint else "",
                  product_parts=parts, files=files, **(info or {}))
  with open(os.path.join(out_dir, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=2)
  return out_dir


def export_embeddings(out_dir: str, product_ids: Sequence[str],
                      titles: Sequence[str], product_emb: np.ndarray, *,
                      categories: Sequence[str] | None = None,
                      query_ids: Sequence[str] | None = None,
                      query_texts: Sequence[str] | None = None,
                      query_emb: np.ndarray | None = None,
                      index_kind: str = "hnsw",
                      checkpoint: str = "",
                      info: dict[str, Any] | None = None) -> str:
  """Writes the export directory of one process (a single product part)."""
  if len(set(map(str, product_ids))) != len(product_ids):
    raise ValueError("product ids must be unique to key the export")
  write_products_part(out_dir, 0, 1, product_ids, titles, product_emb,
                      categories=categories)
  if query_emb is not None:
    write_queries(out_dir, query_ids, query_texts, query_emb)
  elif os.path.exists(os.path.join(out_dir, "queries.parquet")):
    for f in ("queries.parquet", "queries.npy"):  # Not this export's.
      os.remove(os.path.join(out_dir, f))
  return finish_export(out_dir, 1, index_kind=index_kind,
                       checkpoint=checkpoint, info=info)


def _read_manifest(export_dir: str) -> dict[str, Any]:
  path = os.path.join(export_dir, MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{export_dir} is not an embedding export "
                            f"({MANIFEST} missing)")
  with open(path) as f:
    return json.load(f)


def _read_table(export_dir: str, which: str) -> pa.Table:
  """`which` = "products" (all parts, in order) or "queries"."""
  if which != "products":
    return pq.read_table(os.path.join(export_dir, f"{which}.parquet"))
  parts = _read_manifest(export_dir).get("product_parts",
                                         ["products.parquet"])
  return pa.concat_tables(pq.read_table(os.path.join(export_dir, p))
                          for p in parts)


class SearchHit(NamedTuple):
  """One product found for a query; score is the inner product (cosine)."""
  product_id: str
  title: str
  score: float


class ExportedIndex:
  """A loaded export: product table, embeddings and the faiss index."""

  def __init__(self, export_dir: str):
    self.export_dir = export_dir
    self.manifest = _read_manifest(export_dir)
    table = _read_table(export_dir, "products")
    self.ids = table.column("id").to_pylist()
    self.titles = table.column("title").to_pylist()
    self.index = _faiss().read_index(os.path.join(export_dir, INDEX_FILE))
    if self.index.ntotal != len(self.ids):
      raise ValueError(f"{export_dir}: index holds {self.index.ntotal} "
                       f"vectors, the product table {len(self.ids)} rows")

  def search(self, query_emb: np.ndarray, k: int = 10
             ) -> list[list[SearchHit]]:
    """Per query (Q, E): its k best `SearchHit`s, best first."""
    if k < 1:
      raise ValueError(f"k must be at least 1, got {k}")
    query_emb = np.asarray(query_emb, np.float32)
    if query_emb.ndim != 2 or query_emb.shape[1] != self.index.d:
      raise ValueError(f"query embeddings {query_emb.shape} do not match the "
                       f"index dimension {self.index.d}")
    scores, idx = ann_search(self.index, query_emb,
                                 min(k, len(self.ids)))
    return [[SearchHit(self.ids[j], self.titles[j], float(s))
             for s, j in zip(srow, irow) if j >= 0]
            for srow, irow in zip(scores, idx)]


def read_embeddings(export_dir: str, which: str = "products"
                    ) -> tuple[list[str], np.ndarray]:
  """(ids, float32 (N, E)) from the `which` ("products", "queries") table."""
  table = _read_table(export_dir, which)
  return table.column("id").to_pylist(), table_embeddings(table)


def build_index(products: np.ndarray, kind: str = "hnsw", hnsw_m: int = 32,
                ef_construction: int = 200, ef_search: int = 128,
                nlist: int = 0, nprobe: int = 8) -> faiss.Index:
  """A faiss inner-product index over float (N, E) product embeddings.

  Args:
    products: float (N, E), L2-normalised for cosine search.
    kind: "hnsw" (graph, no training), "ivf" (k-means cells) or "flat"
      (exact, for tests and small catalogs).
    hnsw_m, ef_construction, ef_search: HNSW graph degree and beam widths.
    nlist, nprobe: IVF cells (0: about 4 * sqrt(N)) and cells visited.
  """
  faiss = _faiss()  # pylint: disable=redefined-outer-name
  x = np.ascontiguousarray(products, np.float32)
  d = x.shape[1]
  if kind == "hnsw":
    index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search
  elif kind == "ivf":
    nlist = nlist or max(1, min(len(x) // 39, int(4 * np.sqrt(len(x)))))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.nprobe = nprobe
  elif kind == "flat":
    index = faiss.IndexFlatIP(d)
  else:
    raise ValueError(f"unknown index kind {kind!r}; use hnsw, ivf or flat")
  index.add(x)
  return index


def ann_search(index: faiss.Index, queries: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
  """(scores float32 (Q, k), indices int64 (Q, k)); -1 where fewer found."""
  return index.search(np.ascontiguousarray(queries, np.float32), k)
