"""Product catalogs: CSV/Parquet tables of (id, title, category, image).

Sources (issue 4 a, b):
  * the public fashion layout: `styles.csv` + `images/<id>.jpg`
    (`FASHION_COLUMNS`; its `split` column is optional),
  * any CSV/Parquet table with an image-path column or an image-bytes column
    (`CatalogColumns(...)` names the columns).

A `Catalog` holds the metadata in memory (a few hundred bytes per product) and
the images as paths or encoded bytes; pixels are decoded (`images.py`) only
in the input pipeline. Table rows are read by `tables.py`; bad ones are
skipped and counted here (see `bad_records.py`): malformed CSV rows, missing
ids, duplicate ids, empty titles, missing images and image paths that escape
the catalog's root directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Iterable, Sequence

import numpy as np

from dashclip_jax.data import bad_records as br
from dashclip_jax.data import images as images_lib
from dashclip_jax.data import tables


@dataclasses.dataclass(frozen=True)
class CatalogColumns:
  """Which table columns hold what.

  Attributes:
    id: product id (any string; ints are read as their decimal text).
    title: product title (text used for the title/product tower).
    category: aisle category (optional; None: every product gets -1).
    image: column with an image path relative to the catalog root.
    image_bytes: column with encoded image bytes (Parquet `binary`).
    image_template: used when `image` and `image_bytes` are both None:
      path relative to the root, formatted with `id`.
    split: optional column with "train"/"test"/...; when the column is
      missing (or None here) the split is a deterministic hash of the id.
    extra: further columns kept verbatim in `Catalog.attributes`.
  """
  id: str = "id"
  title: str = "title"
  category: str | None = "category"
  image: str | None = "image"
  image_bytes: str | None = None
  image_template: str = "images/{id}.jpg"
  split: str | None = "split"
  extra: tuple[str, ...] = ()


# The public "Fashion Product Images" layout (../shared/data/fashion/README.md).
FASHION_COLUMNS = CatalogColumns(
    id="id", title="productDisplayName", category="articleType", image=None,
    image_template="images/{id}.jpg", split="split",
    extra=("gender", "masterCategory", "subCategory", "baseColour", "usage"))


def hash_split(product_id: str, test_fraction: float = 0.1) -> str:
  """Deterministic train/test split from the id alone (platform-independent)."""
  h = int.from_bytes(hashlib.sha256(product_id.encode()).digest()[:8], "big")
  return "test" if h / 2**64 < test_fraction else "train"


@dataclasses.dataclass
class Catalog:
  """Products, index-aligned: product `i` is `ids[i]`, `titles[i]`, ...

  Attributes:
    name: where it came from (file path or "synthetic").
    ids: (P,) product ids as strings.
    titles: (P,) titles.
    category: int32 (P,) index into `category_names`; -1 for none.
    category_names: sorted category vocabulary (shared by all subsets).
    split: (P,) split names.
    images: (P,) absolute image path (str) or encoded image bytes, or a lazy
      sequence of either (TFDS).
    where: (P,) culprit name of each record ("styles.csv line 17").
    attributes: extra columns, name -> (P,) strings.
    bad: the counted skips made while loading.
  """
  name: str
  ids: list[str]
  titles: list[str]
  category: np.ndarray
  category_names: list[str]
  split: list[str]
  images: Sequence[Any]
  where: list[str]
  attributes: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  bad: br.BadRecords | None = None

  def __len__(self) -> int:
    return len(self.ids)

  def index_of(self, product_id: str) -> int | None:
    """Row of a product id, None if absent."""
    if getattr(self, "_index", None) is None:
      self._index = {pid: i for i, pid in enumerate(self.ids)}
    return self._index.get(str(product_id))

  def id_lookup(self) -> tuple[Any, np.ndarray]:
    """-> (pyarrow string array of the distinct ids, int64 row of each), for
    vectorised lookups (`pyarrow.compute.index_in`) that agree with
    `index_of`."""
    if getattr(self, "_id_lookup", None) is None:
      import pyarrow as pa  # pylint: disable=g-import-not-at-top
      self.index_of("")  # Builds the index.
      self._id_lookup = (pa.array(list(self._index), pa.string()),
                         np.fromiter(self._index.values(), np.int64,
                                     len(self._index)))
    return self._id_lookup

  def take(self, indices: Sequence[int], name: str | None = None) -> "Catalog":
    """Sub-catalog with rows `indices`, keeping the category vocabulary."""
    idx = [int(i) for i in indices]
    return Catalog(
        name=name or self.name,
        ids=[self.ids[i] for i in idx],
        titles=[self.titles[i] for i in idx],
        category=np.asarray(self.category)[idx].astype(np.int32),
        category_names=self.category_names,
        split=[self.split[i] for i in idx],
        images=(self.images.take(idx) if hasattr(self.images, "take")
                else [self.images[i] for i in idx]),
        where=[self.where[i] for i in idx],
        attributes={k: [v[i] for i in idx] for k, v in self.attributes.items()},
        bad=self.bad)

  def subset(self, split: str) -> "Catalog":
    """Products of one split (e.g. "train"), in catalog order."""
    idx = [i for i, s in enumerate(self.split) if s == split]
    return self.take(idx, name=f"{self.name}[{split}]")

  def culprit(self, i: int) -> str:
    """How messages name product `i`: "styles.csv line 17 (product 1865)"."""
    return f"{self.where[i]} (product {self.ids[i]})"

  def image_bytes(self, i: int) -> bytes:
    src = self.images[i]
    if isinstance(src, (bytes, bytearray, memoryview)):
      return bytes(src)
    try:
      with open(src, "rb") as f:
        return f.read()
    except OSError as e:
      raise images_lib.ImageError(self.culprit(i), f"cannot read image "
                                  f"{src}: {e.strerror or e}") from e

  def load_image(self, i: int) -> np.ndarray:
    """Decodes product `i`'s image -> uint8 (H, W, 3). Raises ImageError."""
    return images_lib.decode_image(self.image_bytes(i), self.culprit(i))


def resolve_image_path(root: str, rel: str) -> str | None:
  """Absolute path of `rel` under `root`, or None if it escapes `root`.

  Symlinks are resolved, so a link pointing outside the root is refused too.
  """
  root = os.path.realpath(root)
  path = os.path.realpath(os.path.join(root, rel))
  if os.path.commonpath([root, path]) != root:
    return None
  return path


# ---------------------------------------------------------------------------
# Building catalogs.


def catalog_from_rows(
    rows: Iterable[tables.Row],
    *,
    columns: CatalogColumns,
    root: str | None,
    name: str,
    header: Sequence[str] | None = None,
    test_fraction: float = 0.1,
    max_bad_fraction: float = 0.01,
    check_images: bool = False,
) -> Catalog:
  """Validates rows into a Catalog, skipping and counting bad ones.

  Args:
    rows: (where, row dict or None, error) triples, e.g. from
      `tables.read_table_rows`.
    columns: column mapping.
    root: directory that image paths are relative to (and may not leave).
    name: name for messages.
    header: the table's columns, to fail early on a wrong mapping.
    test_fraction: for the hash split when there is no split column.
    max_bad_fraction: above this fraction of skipped rows, raise BadDataError.
    check_images: decode every image now (slow; otherwise corrupt images are
      counted by the input pipeline when it meets them).

  Returns:
    The catalog; `catalog.bad` holds the skip counts.
  """
  if header is not None:
    needed = [columns.id, columns.title]
    needed += [c for c in (columns.image, columns.image_bytes) if c]
    tables.require_columns(name, header, needed)
    has_split = columns.split is not None and columns.split in header
    has_category = columns.category is not None and columns.category in header
  else:
    has_split = columns.split is not None
    has_category = columns.category is not None

  bad = br.BadRecords(f"catalog {name}", max_bad_fraction=max_bad_fraction)
  ids, titles, cats, splits, images, where_l = [], [], [], [], [], []
  extra = {c: [] for c in columns.extra}
  seen_ids = set()
  for where, row, error in rows:
    if row is None:
      bad.bad(where, "malformed row", error)
      continue
    pid = tables.cell_text(row.get(columns.id))
    if not pid:
      bad.bad(where, "missing id")
      continue
    if pid in seen_ids:
      bad.bad(where, "duplicate id", f"id {pid}")
      continue
    title = tables.cell_text(row.get(columns.title))
    if not title:
      bad.bad(where, "empty title", f"id {pid}")
      continue
    if columns.image_bytes:
      img = row.get(columns.image_bytes)
      if not img:
        bad.bad(where, "missing image", f"id {pid}: empty image bytes")
        continue
      img = bytes(img)
    else:
      rel = (tables.cell_text(row.get(columns.image)) if columns.image
             else columns.image_template.format(id=pid))
      if not rel:
        bad.bad(where, "missing image", f"id {pid}: empty image path")
        continue
      if root is None:
        raise ValueError(f"{name}: image paths need a catalog root directory")
      img = resolve_image_path(root, rel)
      if img is None:
        bad.bad(where, "path escapes catalog root", f"id {pid}: {rel!r}")
        continue
      if not os.path.isfile(img):
        bad.bad(where, "missing image", f"id {pid}: {rel}")
        continue
    if check_images:
      try:
        images_lib.decode_image(
            img if isinstance(img, bytes) else open(img, "rb").read(), where)
      except images_lib.ImageError as e:
        bad.bad(where, "corrupt image", f"id {pid}: {e.reason}")
        continue
      except OSError as e:
        bad.bad(where, "corrupt image", f"id {pid}: {e.strerror or e}")
        continue
    split = tables.cell_text(row.get(columns.split)) if has_split else ""
    seen_ids.add(pid)
    ids.append(pid)
    titles.append(title)
    cats.append(tables.cell_text(row.get(columns.category)) if has_category
                else "")
    splits.append(split or hash_split(pid, test_fraction))
    images.append(img)
    where_l.append(where)
    for c in columns.extra:
      extra[c].append(tables.cell_text(row.get(c)))
    bad.ok()

  if not ids:
    raise br.BadDataError(f"{name}: no usable products. {bad.summary()}")
  bad.check()
  names = sorted({c for c in cats if c})
  lookup = {c: i for i, c in enumerate(names)}
  category = np.array([lookup.get(c, -1) for c in cats], np.int32)
  return Catalog(name=name, ids=ids, titles=titles, category=category,
                 category_names=names, split=splits, images=images,
                 where=where_l, attributes=extra, bad=bad)


def load_catalog(
    path: str,
    columns: CatalogColumns | None = None,
    *,
    root: str | None = None,
    test_fraction: float = 0.1,
    max_bad_fraction: float = 0.01,
    check_images: bool = False,
) -> Catalog:
  """Reads a CSV/Parquet catalog.

  Args:
    path: the table, e.g. ".../fashion/styles.csv" or "catalog.parquet".
    columns: column mapping; default `FASHION_COLUMNS` for a file named
      styles.csv, else `CatalogColumns()` (id, title, category, image, split).
    root: image paths are relative to it and may not escape it; default: the
      table's directory.
    test_fraction, max_bad_fraction, check_images: see `catalog_from_rows`.

  Returns:
    The Catalog (all splits; use `.subset("train")`).
  """
  if columns is None:
    columns = (FASHION_COLUMNS if os.path.basename(path) == "styles.csv"
               else CatalogColumns())
  root = root if root is not None else os.path.dirname(os.path.abspath(path))
  header, rows = tables.read_table_rows(path)
  return catalog_from_rows(
      rows, columns=columns, root=root, name=path, header=header,
      test_fraction=test_fraction, max_bad_fraction=max_bad_fraction,
      check_images=check_images)
