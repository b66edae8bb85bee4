"""Product catalogs: CSV/Parquet tables of (id, title, category, image).

Sources (issue 4 a, b):
  * the public fashion layout: `styles.csv` + `images/<id>.jpg`
    (`FASHION_COLUMNS`; its `split` column is optional),
  * any CSV/Parquet table with an image-path column or an image-bytes column
    (`CatalogColumns(...)` names the columns).

A `Catalog` holds the metadata in memory (a few hundred bytes per product) and
the images as paths or encoded bytes; pixels are decoded (`images.py`) only
in the input pipeline. `catalog_tables.load_catalog` reads one from a table
(bad rows skipped and counted), `image_files.py` finds its image files.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dashclip_jax.data import bad_records as br
from dashclip_jax.data import images as images_lib


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
      ids = pa.array(self.ids, pa.string())
      if pc.count_distinct(ids).as_py() == len(ids):
        self._id_lookup = ids, np.arange(len(ids), dtype=np.int64)
      else:  # index_of finds the last row of a repeated id.
        self.index_of("")
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
