"""The attached product export, searchable with attribute filters, and the
product images under a configured root.

Without filters a query goes to the export's own faiss index
(`ExportedIndex.search`, exactly what `DashClipEncoder.search` does). With
filters ({column: value or [values]}, over the export's string columns
besides id and title, e.g. category; several columns must all match) the
matching rows are ranked exactly against products.npy: one (M, E) x (E,)
product per query, M the matching rows, never a dense query x catalog
array, and no approximate index that could drop the few matching rows.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dashclip_jax.data import image_files
from dashclip_jax import index as index_lib
from dashclip_jax.serving.openai_http import RequestError

_NOT_FILTERS = ("id", "title", "embedding")


class ProductSearch:
  """An embedding export's products: search, filters, attributes."""

  def __init__(self, export_dir: str):
    self.index = index_lib.ExportedIndex(export_dir)
    table = index_lib._read_table(export_dir, "products")  # pylint: disable=protected-access
    self.columns = {name: table.column(name).combine_chunks()
                    for name in table.column_names
                    if name not in _NOT_FILTERS
                    and pa.types.is_string(table.schema.field(name).type)}
    self._attrs = {name: col.to_pylist()
                   for name, col in self.columns.items()}
    # Read only for filtered searches, only the matching rows.
    self._emb = np.load(os.path.join(export_dir, "products.npy"),
                        mmap_mode="r")
    self.ids, self.titles = self.index.ids, self.index.titles
    self._rows = {pid: i for i, pid in enumerate(self.ids)}  # faiss -> row

  @property
  def dim(self) -> int:
    return self.index.index.d

  def __len__(self) -> int:
    return len(self.ids)

  def matching(self, filters: Mapping[str, Any]) -> np.ndarray:
    """int64 (M,): rows whose columns hold one of the filters' values."""
    keep = np.ones(len(self.ids), bool)
    for name, values in filters.items():
      if name not in self.columns:
        raise RequestError(
            f"no filter {name!r}: this export's products have "
            f"{sorted(self.columns) or 'no filterable columns'}",
            f"filters.{name}")
      values = [values] if isinstance(values, str) else values
      if not values or not all(isinstance(v, str) for v in values):
        raise RequestError(f"filters.{name} must be a string or a non-empty "
                           "list of strings", f"filters.{name}")
      hit = pc.is_in(self.columns[name], pa.array(values, pa.string()))
      keep &= hit.to_numpy(zero_copy_only=False).astype(bool)
    return np.flatnonzero(keep)

  def search(self, query_emb: np.ndarray, k: int,
             filters: Mapping[str, Any] | None = None
             ) -> list[tuple[int, float]]:
    """(row, score) of the k best products for float32 (E,), best first."""
    if not filters:
      scores, rows = self._unfiltered(query_emb, k)
    else:
      rows = self.matching(filters)
      scores = np.asarray(self._emb[rows], np.float32) @ query_emb
      top = np.argsort(-scores, kind="stable")[:k] if len(rows) <= k else (
          _top_k(scores, k))
      scores, rows = scores[top], rows[top]
    return [(int(r), float(s)) for r, s in zip(rows, scores)]

  def _unfiltered(self, query_emb: np.ndarray, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    hits = self.index.search(query_emb[None], k)[0]
    rows = np.fromiter((self._row(h.product_id) for h in hits), np.int64,
                       len(hits))
    return np.array([h.score for h in hits], np.float32), rows

  def _row(self, product_id: str) -> int:
    return self._rows[product_id]

  def hit(self, row: int, score: float) -> dict[str, Any]:
    """One result as JSON: id, title, score and the row's attributes."""
    return {"product_id": self.ids[row], "title": self.titles[row],
            "score": score,
            **{name: col[row] for name, col in self._attrs.items()}}


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k highest scores, highest first (ties: lower index)."""
  part = np.argpartition(-scores, k - 1)[:k]
  return part[np.lexsort((part, -scores[part]))]


class ImageRoot:
  """Image files under one root; anything resolving outside it is refused
  (symlinks included: `catalog.resolve_image_path`)."""

  def __init__(self, root: str, template: str = "images/{id}.jpg"):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"--image_root={root}: no such directory")
    self.root, self.template = os.path.realpath(root), template

  def resolve(self, path: str, param: str = "image_path") -> str:
    """The file's real path; RequestError (400) outside the root, 404 if
    it is not a file."""
    rel = os.path.relpath(path, self.root) if os.path.isabs(path) else path
    real = image_files.resolve_image_path(self.root, rel)
    if real is None:
      raise RequestError(f"image path {path!r} is outside this server's "
                         "image root (--image_root)", param)
    if not os.path.isfile(real):
      raise RequestError(f"image path {path!r}: no such file under the "
                         "image root", param, 404)
    return real

  def product_image(self, product_id: str) -> str | None:
    """The product's image file (its id in the template), if there."""
    real = image_files.resolve_image_path(
        self.root, self.template.format(id=product_id))
    return real if real and os.path.isfile(real) else None
