"""Picks the data named by a config: synthetic (default), fashion, table,
tfds.

`load_sources(config.data)` returns train/test catalogs and relevance sets,
ready for `train_datasets.stage1_dataset` / `stage2_dataset` and
`eval_datasets`; every job (training, evaluation, curation, ranking) reads
its data through it, from the one block `data_block` (configs/common.py)
builds.
Config fields are listed in `dashclip_jax/data/__init__.py`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

from dashclip_jax.data import bad_records
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import catalog_tables
from dashclip_jax.data import images as images_lib
from dashclip_jax.data import prepared
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import relevance_tables
from dashclip_jax.data import synthetic
from dashclip_jax.runtime import config_files

SOURCES = ("synthetic", "fashion", "table", "prepared", "tfds")
# The config.data fields load_sources reads (trainers/inputs.py caches the
# sources per their values).
SOURCE_KEYS = ("source", "path", "catalog_path", "columns",
               "relevance_train_path", "relevance_test_path", "tfds_dir",
               "synthetic", "max_bad_fraction",
               "relevance_test_max_bad_fraction", "test_fraction",
               "max_image_pixels")
# Keys of the old per-job data blocks (config_files.RETIRED_KEYS says what
# replaced each).
RETIRED_KEYS = ("catalog_dir", "catalog_file", "qrels_path",
                "qrels_max_bad_fraction")
# data.split: what evaluation ranks and the ranking job simulates.
SPLITS = ("test", "train", "all")


@dataclasses.dataclass
class Sources:
  """Train/test catalogs, the relevance data over each, and the whole
  catalog (both splits, `catalog.split` says which).

  train_table: the prepared table directory the train relevance is (None:
  it is no prepared table); with `load_sources(..., whole_train_relevance=
  False)` it is left unread (train_relevance None) for the trainers, whose
  every process reads its own shard files of it.
  """
  train_catalog: catalog_lib.Catalog
  test_catalog: catalog_lib.Catalog
  train_relevance: relevance_lib.Relevance | None
  test_relevance: relevance_lib.Relevance | None
  catalog: catalog_lib.Catalog
  train_table: str | None = None

  def of_split(self, split: str) -> tuple[catalog_lib.Catalog,
                                          relevance_lib.Relevance | None]:
    """-> (products, their relevance) of `data.split`: "test", "train", or
    "all" (every product, judged by the test relevance)."""
    if split == "test":
      return self.test_catalog, self.test_relevance
    if split == "train":
      return self.train_catalog, self.train_relevance
    if split != "all":
      raise config_files.ConfigError(
          f"config.data.split must be one of {', '.join(SPLITS)}, got "
          f"{split!r}")
    rel = self.test_relevance
    if rel is not None:  # Test rows -> rows of the whole catalog.
      rows = np.flatnonzero(np.asarray(self.catalog.split) == "test")
      rel = dataclasses.replace(rel, product=rows[rel.product].astype(
          np.int32), num_products=len(self.catalog))
    return self.catalog, rel


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  if isinstance(cfg, Mapping):
    return cfg.get(key, default)
  return getattr(cfg, key, default) if cfg is not None else default


def _check_keys(cfg: Any) -> None:
  """ConfigError naming the key to use for a retired one (a config built in
  code can still carry them; the flags are caught by flag_error)."""
  for key in RETIRED_KEYS:
    if _get(cfg, key) is not None:
      raise config_files.ConfigError(config_files.retired_key_error(
          f"data.{key}"))
  if _get(cfg, "source") == "csv":
    raise config_files.ConfigError(
        "config.data.source='csv' is retired: set source='table' with "
        "data.catalog_path=<the table> (or source='fashion' with "
        "data.path=<the folder>)")


def load_sources(cfg: Any = None, *,
                 whole_train_relevance: bool = True) -> Sources:
  """Loads the data a config names.

  Args:
    cfg: ConfigDict/dict with `source` in SOURCES (default "synthetic") and:
      synthetic: `synthetic` (dict of `synthetic.synthetic_data` kwargs);
      fashion: `path` (folder with styles.csv, relevance_train.csv,
        qrels_test.csv); `relevance_train_path` / `relevance_test_path`,
        when set, replace the folder's relevance files;
      table: `catalog_path` (CSV/Parquet), `columns` (dict of
        CatalogColumns fields; none: the fashion columns), optional
        `relevance_train_path`, `relevance_test_path` (a file, or a folder
        holding relevance_train.csv / qrels_test.csv);
      prepared: `path`, a directory `python -m dashclip_jax.data.prepare`
        wrote (catalog.parquet + relevance_train/ + qrels_test/, validated
        once); `relevance_*_path` replace its tables as for fashion;
      tfds: `tfds_dir` (holding dashclip_catalog [+ dashclip_relevance]).
      Any relevance path may also name a prepared table directory.
      All: `max_bad_fraction` (0.01), `relevance_test_max_bad_fraction`
      (< 0, the default: max_bad_fraction), `test_fraction` (0.1, hash
      split when the catalog has no split column), `max_image_pixels`
      (50M: larger images are bad images, never decoded).
    whole_train_relevance: False: a train relevance that is a prepared
      table is not read here, only named (`Sources.train_table`).

  Returns:
    Sources; relevance entries are None where the data has none.
  """
  _check_keys(cfg)
  # Every job reads its data through here: the limit holds for its decodes
  # (and its data workers') from now on.
  images_lib.set_max_pixels(int(_get(cfg, "max_image_pixels",
                                     images_lib.DEFAULT_MAX_PIXELS)))
  source = _get(cfg, "source", "synthetic")
  max_bad = float(_get(cfg, "max_bad_fraction", 0.01))
  test_bad = float(_get(cfg, "relevance_test_max_bad_fraction", -1.0))
  test_limit = ("relevance_test_max_bad_fraction" if test_bad >= 0
                else "max_bad_fraction")
  test_fraction = float(_get(cfg, "test_fraction", 0.1))
  if source == "synthetic":
    d = synthetic.synthetic_data(**dict(_get(cfg, "synthetic", None) or {}))
    return Sources(d.train_catalog, d.test_catalog, d.train, d.test,
                   d.catalog)

  def rel(path, cat, whole, test=False):
    """Rows are judged against the whole catalog: one naming a product of
    the other split is named so (a hash split puts ~10% of a catalog
    without a split column there), not as an unknown product."""
    if not path:
      return None
    if not test:
      return relevance_tables.load_relevance(path, cat, whole=whole,
                                             max_bad_fraction=max_bad)
    try:
      return relevance_tables.load_relevance(
          path, cat, whole=whole,
          max_bad_fraction=test_bad if test_bad >= 0 else max_bad)
    except bad_records.BadDataError as e:
      raise bad_records.BadDataError(
          f"{e} The limit is --config.data.{test_limit}.") from None

  def given(key, name):
    """An explicit relevance path; a directory (e.g. a curation run's
    `expanded/`) means its `name` file, unless it is a prepared table."""
    path = _get(cfg, key)
    if path and os.path.isdir(path) and not prepared.is_prepared(path):
      path = os.path.join(path, name)
    if path and not os.path.exists(path):
      raise FileNotFoundError(f"data.{key} {path!r} not found")
    return path or None

  def folder(cat, train_rel, test_rel):
    """A data folder's sources; explicit relevance paths replace the
    folder's own (e.g. curated labels)."""
    train_rel = (given("relevance_train_path", "relevance_train.csv")
                 or train_rel)
    test_rel = given("relevance_test_path", "qrels_test.csv") or test_rel
    return of_catalog(cat, train_rel, test_rel)

  def of_catalog(cat, train_rel, test_rel):
    """The sources over `cat`'s two splits; a prepared train table is left
    unread without `whole_train_relevance`."""
    train, test = cat.subset("train"), cat.subset("test")
    table = (train_rel if train_rel and os.path.isdir(train_rel)
             and prepared.is_prepared(train_rel) else None)
    if table and not whole_train_relevance:
      train_rel = None
    return Sources(train, test, rel(train_rel, train, cat),
                   rel(test_rel, test, cat, test=True), cat, table)

  if source == "prepared":
    root = _get(cfg, "path")
    if not root or not prepared.is_prepared(root):
      raise FileNotFoundError(
          f"data.path {root!r} is no prepared directory (no "
          f"{prepared.MANIFEST}; python -m dashclip_jax.data.prepare writes "
          "one)")
    return folder(catalog_tables.load_catalog(root), *(
        os.path.join(root, n) if prepared.is_prepared(os.path.join(root, n))
        else None for n in ("relevance_train", "qrels_test")))

  if source == "fashion":
    root = _get(cfg, "path")
    if not root or not os.path.isdir(root):
      raise FileNotFoundError(f"data.path {root!r} is not a directory")
    cat = catalog_tables.load_catalog(
        os.path.join(root, "styles.csv"), catalog_lib.FASHION_COLUMNS,
        test_fraction=test_fraction, max_bad_fraction=max_bad)
    return folder(cat, *(
        os.path.join(root, n) if os.path.isfile(os.path.join(root, n))
        else None for n in ("relevance_train.csv", "qrels_test.csv")))
  if source == "table":
    mapping = _get(cfg, "columns", None)
    columns = (catalog_lib.CatalogColumns(**dict(mapping)) if mapping
               else None)  # None: fashion mapping for styles.csv.
    path = _get(cfg, "catalog_path")
    if not path or not os.path.isfile(path):
      raise FileNotFoundError(f"data.catalog_path {path!r} not found")
    train_rel = given("relevance_train_path", "relevance_train.csv")
    test_rel = given("relevance_test_path", "qrels_test.csv")
    cat = catalog_tables.load_catalog(
        path, columns, test_fraction=test_fraction, max_bad_fraction=max_bad)
    return of_catalog(cat, train_rel, test_rel)
  if source == "tfds":
    # Imported here only: tensorflow-datasets is an optional extra.
    # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds
    from dashclip_jax.data import tfds_builders
    # pylint: enable=g-import-not-at-top
    d = _get(cfg, "tfds_dir")
    cat = tfds_builders.load_catalog_tfds(d, test_fraction=test_fraction,
                                          max_bad_fraction=max_bad)
    train, test = cat.subset("train"), cat.subset("test")
    rels = {}
    if os.path.isdir(os.path.join(d, "dashclip_relevance")):
      # Only a split that is not stored means "no relevance"; bad relevance
      # data raises (BadDataError), as it does for CSV.
      stored = set(tfds.data_source("dashclip_relevance", data_dir=d,
                                    download=False))
      for split, c in (("train", train), ("test", test)):
        if split in stored:
          rels[split] = tfds_builders.load_relevance_tfds(
              d, split, c, max_bad_fraction=(
                  test_bad if split == "test" and test_bad >= 0
                  else max_bad))
    return Sources(train, test, rels.get("train"), rels.get("test"), cat)
  raise config_files.ConfigError(f"data.source {source!r} not in {SOURCES}")
