"""TFDS builders that materialise catalogs and relevance data to ArrayRecord.

Issue 4 d: at pod scale the input must be random access; ArrayRecord files
read through `tfds.data_source` give that without TensorFlow (tfds writes and
reads ArrayRecord with numpy only). This module is the only one that imports
`tensorflow_datasets` (extra `[tfds]`); nothing in training imports it unless
`source="tfds"` is configured.

  * `dashclip_catalog`: one record per product, splits from `Catalog.split`,
    image stored as the original encoded bytes, so decoding is bit-identical
    to reading the CSV + image files.
  * `dashclip_relevance`: one record per judged pair, splits as given.

Write once with `prepare_catalog` / `prepare_relevance`; read with
`load_catalog_tfds` / `load_relevance_tfds`, which return the same
`Catalog` / `Relevance` objects as the CSV readers (validated by the same
code, so bad rows are still counted), with images read lazily per record.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import catalog_tables
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import relevance_tables

_VERSION = tfds.core.Version("1.0.0")


class DashclipCatalog(tfds.core.GeneratorBasedBuilder):
  """Products: id, title, category, image bytes, extra attributes."""

  VERSION = _VERSION

  def __init__(self, *, catalog: catalog_lib.Catalog | None = None, **kwargs):
    self._catalog = catalog
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="dashclip_jax product catalog",
        features=tfds.features.FeaturesDict({
            "index": tfds.features.Scalar(dtype=np.int64),
            "id": tfds.features.Text(),
            "title": tfds.features.Text(),
            "category": tfds.features.Text(),
            "image": tfds.features.Scalar(dtype=np.object_),
            "where": tfds.features.Text(),
            "attributes": tfds.features.Text(),  # JSON {name: value}.
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    if self._catalog is None:
      raise ValueError("DashclipCatalog needs catalog= to be prepared")
    return {s: self._generate_examples(s)
            for s in sorted(set(self._catalog.split))}

  def _generate_examples(self, split: str):
    c = self._catalog
    for i in range(len(c)):
      if c.split[i] != split:
        continue
      cat = int(c.category[i])
      yield i, {
          "index": i, "id": c.ids[i], "title": c.titles[i],
          "category": c.category_names[cat] if cat >= 0 else "",
          "image": c.image_bytes(i), "where": c.where[i],
          "attributes": json.dumps({k: v[i] for k, v in c.attributes.items()}),
      }


class DashclipRelevance(tfds.core.GeneratorBasedBuilder):
  """Judged pairs: query_id, query, product_id, label."""

  VERSION = _VERSION

  def __init__(self, *, splits: dict[str, tuple[relevance_lib.Relevance,
                                                catalog_lib.Catalog]]
               | None = None, **kwargs):
    self._splits = splits
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="dashclip_jax graded query-product relevance",
        features=tfds.features.FeaturesDict({
            "index": tfds.features.Scalar(dtype=np.int64),
            "query_id": tfds.features.Text(),
            "query": tfds.features.Text(),
            "product_id": tfds.features.Text(),
            "label": tfds.features.Scalar(dtype=np.int64),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    if self._splits is None:
      raise ValueError("DashclipRelevance needs splits= to be prepared")
    return {s: self._generate_examples(s) for s in self._splits}

  def _generate_examples(self, split: str):
    rel, cat = self._splits[split]
    for n in range(len(rel)):
      q = int(rel.query[n])
      yield n, {"index": n, "query_id": rel.query_ids[q],
                "query": rel.queries[q],
                "product_id": cat.ids[int(rel.product[n])],
                "label": int(rel.label[n])}


def prepare_catalog(catalog: catalog_lib.Catalog, data_dir: str) -> str:
  """Writes `dashclip_catalog` ArrayRecord files under data_dir; returns it."""
  builder = DashclipCatalog(catalog=catalog, data_dir=data_dir,
                            file_format="array_record")
  builder.download_and_prepare()
  # The category vocabulary may hold names no stored product uses (e.g. a
  # split of a larger catalog); keep it so category indices do not move.
  with open(_vocab_file(data_dir), "w") as f:
    json.dump(list(catalog.category_names), f)
  return data_dir


def _vocab_file(data_dir: str) -> str:
  return os.path.join(data_dir, "dashclip_catalog", "category_names.json")


def prepare_relevance(
    splits: dict[str, tuple[relevance_lib.Relevance, catalog_lib.Catalog]],
    data_dir: str) -> str:
  """Writes `dashclip_relevance`; splits: name -> (relevance, its catalog)."""
  builder = DashclipRelevance(splits=splits, data_dir=data_dir,
                              file_format="array_record")
  builder.download_and_prepare()
  return data_dir


def _data_sources(name: str, data_dir: str) -> dict:
  return dict(tfds.data_source(name, data_dir=data_dir, download=False))


def _text(v) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


class TfdsImages(Sequence):
  """Lazy, picklable image column: catalog row -> encoded bytes.

  Each process opens the ArrayRecord files on first use, so grain workers
  read images straight from disk.
  """

  def __init__(self, data_dir: str, refs: Sequence[tuple[str, int]]):
    self.data_dir = data_dir
    self.refs = list(refs)  # Catalog row -> (split, record index).
    self._sources = None

  def __getstate__(self):
    return {"data_dir": self.data_dir, "refs": self.refs, "_sources": None}

  def __len__(self) -> int:
    return len(self.refs)

  def __getitem__(self, i: int) -> bytes:
    if self._sources is None:
      self._sources = _data_sources("dashclip_catalog", self.data_dir)
    split, k = self.refs[i]
    return bytes(self._sources[split][k]["image"])

  def take(self, indices: Sequence[int]) -> "TfdsImages":
    return TfdsImages(self.data_dir, [self.refs[i] for i in indices])


def load_catalog_tfds(data_dir: str, *, test_fraction: float = 0.1,
                      max_bad_fraction: float = 0.01) -> catalog_lib.Catalog:
  """Reads `dashclip_catalog` back into a Catalog (images lazy).

  The rows go through `catalog.catalog_from_rows`, as the CSV path does, so
  products, order, categories and splits are identical to the source.
  """
  sources = _data_sources("dashclip_catalog", data_dir)
  records = []
  for split, src in sources.items():
    for k in range(len(src)):
      r = src[k]
      records.append((int(r["index"]), split, k, r))
  records.sort(key=lambda t: t[0])  # Back to catalog order across splits.
  extra = tuple(json.loads(_text(records[0][3]["attributes"]))) if records \
      else ()
  refs = []

  def rows():
    for _, split, k, r in records:
      refs.append((split, k))
      row = {"id": _text(r["id"]), "title": _text(r["title"]),
             "category": _text(r["category"]), "split": split,
             "image": b"lazy"}  # Real bytes are read lazily below.
      row.update(json.loads(_text(r["attributes"])))
      yield _text(r["where"]), row, ""

  columns = catalog_lib.CatalogColumns(image=None, image_bytes="image",
                                       extra=extra)
  cat = catalog_tables.catalog_from_rows(
      rows(), columns=columns, root=None, name=f"tfds {data_dir}",
      test_fraction=test_fraction, max_bad_fraction=max_bad_fraction)
  if len(cat) != len(refs):
    raise ValueError(f"tfds {data_dir}: {len(refs) - len(cat)} stored "
                     "products failed validation; the files are corrupt.")
  cat.images = TfdsImages(data_dir, refs)
  if os.path.isfile(_vocab_file(data_dir)):
    with open(_vocab_file(data_dir)) as f:
      names = json.load(f)
    lookup = {c: i for i, c in enumerate(names)}
    cat.category = np.array(
        [lookup[cat.category_names[c]] if c >= 0 else -1
         for c in cat.category], np.int32)
    cat.category_names = names
  return cat


def load_relevance_tfds(data_dir: str, split: str,
                        catalog: catalog_lib.Catalog, *,
                        max_bad_fraction: float = 0.01
                        ) -> relevance_lib.Relevance:
  """Reads one split of `dashclip_relevance`, validated against catalog."""
  src = _data_sources("dashclip_relevance", data_dir)[split]
  # The writer may reorder records; the stored index restores source order.
  records = sorted((src[k] for k in range(len(src))),
                   key=lambda r: int(r["index"]))

  def rows():
    for r in records:
      k = int(r["index"])
      yield f"tfds dashclip_relevance[{split}] row {k}", {
          "query_id": _text(r["query_id"]), "query": _text(r["query"]),
          "product_id": _text(r["product_id"]), "label": int(r["label"])}, ""

  return relevance_tables.relevance_from_rows(
      rows(), catalog, name=f"tfds {data_dir}[{split}]",
      max_bad_fraction=max_bad_fraction)
