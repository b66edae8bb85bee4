"""Embedding export: Parquet + .npy tables keyed by id, and a faiss index.

Layout of an export directory:
  products.parquet   id (string), title (string), category (string),
                     embedding (list<float32>, length E)
  products.npy       float32 (N, E), row i == products.parquet row i
  queries.parquet    id, text, embedding          (when queries are given)
  queries.npy        float32 (Q, E)
  products.faiss     faiss inner-product index over products.npy rows
  manifest.json      counts, dim, index kind, model checkpoint, files
"""

import json
import os
from typing import Any, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dashclip_jax.evaluation import knn

MANIFEST = "manifest.json"
INDEX_FILE = "products.faiss"


def _table(ids, texts, text_name, emb, extra=None) -> pa.Table:
  emb = np.asarray(emb, np.float32)
  if len(ids) != len(emb) or len(texts) != len(emb):
    raise ValueError(f"{len(ids)} ids, {len(texts)} {text_name}s and "
                     f"{len(emb)} embeddings must match")
  cols = {"id": pa.array([str(i) for i in ids], pa.string()),
          text_name: pa.array(list(texts), pa.string())}
  for k, v in (extra or {}).items():
    cols[k] = pa.array(list(v), pa.string())
  # Fixed-size lists: readers get an (N, E) block without per-row offsets.
  cols["embedding"] = pa.FixedSizeListArray.from_arrays(
      pa.array(emb.reshape(-1), pa.float32()), emb.shape[1])
  return pa.table(cols)


def export_embeddings(out_dir: str, product_ids: Sequence[str],
                      titles: Sequence[str], product_emb: np.ndarray, *,
                      categories: Sequence[str] | None = None,
                      query_ids: Sequence[str] | None = None,
                      query_texts: Sequence[str] | None = None,
                      query_emb: np.ndarray | None = None,
                      index_kind: str = "hnsw",
                      checkpoint: str = "",
                      info: dict[str, Any] | None = None) -> str:
  """Writes the export directory described in the module docstring."""
  product_emb = np.asarray(product_emb, np.float32)
  if product_emb.ndim != 2:
    raise ValueError(f"product embeddings must be (N, E), got "
                     f"{product_emb.shape}")
  if len(set(map(str, product_ids))) != len(product_ids):
    raise ValueError("product ids must be unique to key the export")
  os.makedirs(out_dir, exist_ok=True)
  extra = {"category": categories} if categories is not None else None
  pq.write_table(_table(product_ids, titles, "title", product_emb, extra),
                 os.path.join(out_dir, "products.parquet"))
  np.save(os.path.join(out_dir, "products.npy"), product_emb)
  files = ["products.parquet", "products.npy", INDEX_FILE]
  if query_emb is not None:
    pq.write_table(_table(query_ids, query_texts, "text", query_emb),
                   os.path.join(out_dir, "queries.parquet"))
    np.save(os.path.join(out_dir, "queries.npy"),
            np.asarray(query_emb, np.float32))
    files += ["queries.parquet", "queries.npy"]
  index = knn.build_index(product_emb, kind=index_kind)
  faiss.write_index(index, os.path.join(out_dir, INDEX_FILE))
  manifest = dict(num_products=len(product_emb), dim=product_emb.shape[1],
                  num_queries=0 if query_emb is None else len(query_emb),
                  index=index_kind, metric="inner_product",
                  checkpoint=os.path.abspath(checkpoint) if checkpoint else "",
                  files=files, **(info or {}))
  with open(os.path.join(out_dir, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=2)
  return out_dir


class ExportedIndex:
  """A loaded export: product table, embeddings and the faiss index."""

  def __init__(self, export_dir: str):
    path = os.path.join(export_dir, MANIFEST)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{export_dir} is not an embedding export "
                              f"({MANIFEST} missing)")
    with open(path) as f:
      self.manifest = json.load(f)
    table = pq.read_table(os.path.join(export_dir, "products.parquet"))
    self.ids = table.column("id").to_pylist()
    self.titles = table.column("title").to_pylist()
    self.index = faiss.read_index(os.path.join(export_dir, INDEX_FILE))
    if self.index.ntotal != len(self.ids):
      raise ValueError(f"{export_dir}: index holds {self.index.ntotal} "
                       f"vectors, products.parquet {len(self.ids)} rows")

  def search(self, query_emb: np.ndarray, k: int = 10
             ) -> list[list[tuple[str, str, float]]]:
    """Per query (Q, E): [(product id, title, score)] best first."""
    query_emb = np.asarray(query_emb, np.float32)
    if query_emb.ndim != 2 or query_emb.shape[1] != self.index.d:
      raise ValueError(f"query embeddings {query_emb.shape} do not match the "
                       f"index dimension {self.index.d}")
    scores, idx = knn.ann_search(self.index, query_emb,
                                 min(k, len(self.ids)))
    return [[(self.ids[j], self.titles[j], float(s))
             for s, j in zip(srow, irow) if j >= 0]
            for srow, irow in zip(scores, idx)]


def read_embeddings(export_dir: str, which: str = "products"
                    ) -> tuple[list[str], np.ndarray]:
  """(ids, float32 (N, E)) from `<which>.parquet` of an export."""
  table = pq.read_table(os.path.join(export_dir, f"{which}.parquet"))
  emb = table.column("embedding").combine_chunks()
  dim = emb.type.list_size
  return (table.column("id").to_pylist(),
          emb.flatten().to_numpy().reshape(-1, dim))
