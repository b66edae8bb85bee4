"""Minimal readers for the fashion catalog layout and graded query files.

Layout: `<dir>/styles.csv` (one row per product; columns `id`,
`productDisplayName` = title, `articleType` = aisle category, optional
`split`) and `<dir>/images/<id>.jpg`. Graded queries: a CSV with columns
`query_id, query, product_id, label`.

TODO(data package): this is a private stand-in written while
`dashclip_jax/data/` was being built; swap it for the data package's catalog
loader once it lands so there is one reader of the layout.
"""

import csv
import dataclasses
import os
from typing import Sequence

import numpy as np
from PIL import Image

_REQUIRED = ("id", "productDisplayName", "articleType")


@dataclasses.dataclass(frozen=True)
class Catalog:
  """Products in file order; `split[i]` is "" when the file has no split."""
  root: str
  ids: tuple[str, ...]
  titles: tuple[str, ...]
  categories: tuple[str, ...]
  splits: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.ids)

  def select(self, split: str) -> "Catalog":
    """Products of one split ("" or "all": every product)."""
    if split in ("", "all"):
      return self
    if not any(self.splits):
      raise ValueError(f"{self.root}/styles.csv has no 'split' column; use "
                       "data.split='all' to evaluate the whole catalog")
    keep = [i for i, s in enumerate(self.splits) if s == split]
    if not keep:
      raise ValueError(f"{self.root}/styles.csv: no product has split "
                       f"{split!r} (splits: {sorted(set(self.splits))})")
    pick = lambda xs: tuple(xs[i] for i in keep)
    return Catalog(self.root, pick(self.ids), pick(self.titles),
                   pick(self.categories), pick(self.splits))

  def image_path(self, i: int) -> str:
    return os.path.join(self.root, "images", f"{self.ids[i]}.jpg")

  def load_images(self, indices: Sequence[int]) -> list[Image.Image]:
    """RGB PIL images of products `indices`; a missing file names its path."""
    out = []
    for i in indices:
      path = self.image_path(i)
      if not os.path.exists(path):
        raise FileNotFoundError(f"image of product {self.ids[i]} missing: {path}")
      with Image.open(path) as im:
        out.append(im.convert("RGB"))
    return out


def read_catalog(root: str) -> Catalog:
  """Reads `<root>/styles.csv` (the public Fashion Product Images layout)."""
  path = os.path.join(root, "styles.csv")
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [c for c in _REQUIRED if c not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f"{path}: missing columns {missing} "
                       f"(has {reader.fieldnames})")
    rows = list(reader)
  seen = set()
  for n, r in enumerate(rows):
    if r["id"] in seen:
      raise ValueError(f"{path} row {n + 2}: duplicate product id {r['id']}")
    seen.add(r["id"])
  return Catalog(
      root=root,
      ids=tuple(r["id"] for r in rows),
      titles=tuple(r["productDisplayName"] or "" for r in rows),
      categories=tuple(r["articleType"] for r in rows),
      splits=tuple(r.get("split") or "" for r in rows))


@dataclasses.dataclass(frozen=True)
class Queries:
  """Graded queries: ids/texts in first-seen order and their labelled pairs."""
  path: str
  ids: tuple[str, ...]
  texts: tuple[str, ...]
  qrels: tuple[tuple[str, str, int], ...]  # (query_id, product_id, label)


def read_qrels(path: str) -> Queries:
  """Reads a `query_id, query, product_id, label` CSV."""
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    cols = ("query_id", "query", "product_id", "label")
    missing = [c for c in cols if c not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f"{path}: missing columns {missing} "
                       f"(has {reader.fieldnames})")
    texts, qrels = {}, []
    for n, r in enumerate(reader):
      qid = r["query_id"]
      if texts.setdefault(qid, r["query"]) != r["query"]:
        raise ValueError(f"{path} row {n + 2}: query {qid!r} has two texts "
                         f"{texts[qid]!r} and {r['query']!r}")
      try:
        label = int(r["label"])
      except ValueError:
        raise ValueError(f"{path} row {n + 2}: label {r['label']!r} is not an "
                         "integer") from None
      qrels.append((qid, r["product_id"], label))
  return Queries(path, tuple(texts), tuple(texts.values()), tuple(qrels))


def images_to_array(images: Sequence[Image.Image], size: int) -> np.ndarray:
  """uint8 (B, size, size, 3): plain square resize, for probes and fakes."""
  return np.stack([np.asarray(im.resize((size, size), Image.BICUBIC))
                   for im in images])
