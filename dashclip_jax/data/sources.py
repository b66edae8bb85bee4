"""Picks the data named by a config: synthetic (default), fashion, csv, tfds.

`load_sources(config.data)` returns train/test catalogs and relevance sets,
ready for `train_datasets.stage1_dataset` / `stage2_dataset` and
`eval_datasets`.
Config fields are listed in `dashclip_jax/data/__init__.py`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from dashclip_jax import config_lib
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import synthetic

SOURCES = ("synthetic", "fashion", "table", "csv", "tfds")


@dataclasses.dataclass
class Sources:
  """Train/test catalogs and the relevance data over each."""
  train_catalog: catalog_lib.Catalog
  test_catalog: catalog_lib.Catalog
  train_relevance: relevance_lib.Relevance | None
  test_relevance: relevance_lib.Relevance | None


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  if isinstance(cfg, Mapping):
    return cfg.get(key, default)
  return getattr(cfg, key, default) if cfg is not None else default


def load_sources(cfg: Any = None) -> Sources:
  """Loads the data a config names.

  Args:
    cfg: ConfigDict/dict with `source` in SOURCES (default "synthetic") and:
      synthetic: `synthetic` (dict of `synthetic.synthetic_data` kwargs);
      fashion: `path` (folder with styles.csv, relevance_train.csv,
        qrels_test.csv); `relevance_train_path` / `relevance_test_path`,
        when set, replace the folder's relevance files;
      table: `catalog_path` (CSV/Parquet), `columns` (dict of
        CatalogColumns fields), optional `relevance_train_path`,
        `relevance_test_path` (a file, or a folder holding
        relevance_train.csv / qrels_test.csv);
      csv: like table, with the evaluation config's names: `catalog_dir` +
        `catalog_file` (default styles.csv); relevance files are looked up
        in catalog_dir as in "fashion" unless given;
      tfds: `tfds_dir` (holding dashclip_catalog [+ dashclip_relevance]).
      All: `max_bad_fraction` (0.01), `test_fraction` (0.1, hash split when
      the catalog has no split column).

  Returns:
    Sources; relevance entries are None where the data has none.
  """
  source = _get(cfg, "source", "synthetic")
  max_bad = float(_get(cfg, "max_bad_fraction", 0.01))
  test_fraction = float(_get(cfg, "test_fraction", 0.1))
  if source == "synthetic":
    d = synthetic.synthetic_data(**dict(_get(cfg, "synthetic", None) or {}))
    return Sources(d.train_catalog, d.test_catalog, d.train, d.test)

  def rel(path, cat):
    if not path:
      return None
    return relevance_lib.load_relevance(path, cat, max_bad_fraction=max_bad)

  def given(key, name):
    """An explicit relevance path; a directory (e.g. a curation run's
    `expanded/`) means its `name` file."""
    path = _get(cfg, key)
    if path and os.path.isdir(path):
      path = os.path.join(path, name)
    if path and not os.path.isfile(path):
      raise FileNotFoundError(f"data.{key} {path!r} not found")
    return path or None

  if source == "fashion":
    root = _get(cfg, "path")
    if not root or not os.path.isdir(root):
      raise FileNotFoundError(f"data.path {root!r} is not a directory")
    cat = catalog_lib.load_catalog(
        os.path.join(root, "styles.csv"), catalog_lib.FASHION_COLUMNS,
        test_fraction=test_fraction, max_bad_fraction=max_bad)
    train, test = cat.subset("train"), cat.subset("test")
    opt = lambda n: (os.path.join(root, n)
                     if os.path.isfile(os.path.join(root, n)) else None)
    # Explicit paths replace the folder's own (e.g. curated labels).
    train_rel = (given("relevance_train_path", "relevance_train.csv")
                 or opt("relevance_train.csv"))
    test_rel = (given("relevance_test_path", "qrels_test.csv")
                or opt("qrels_test.csv"))
    return Sources(train, test, rel(train_rel, train), rel(test_rel, test))
  if source in ("table", "csv"):
    mapping = _get(cfg, "columns", None)
    columns = (catalog_lib.CatalogColumns(**dict(mapping)) if mapping
               else None)  # None: fashion mapping for styles.csv.
    path = _get(cfg, "catalog_path")
    train_rel = given("relevance_train_path", "relevance_train.csv")
    test_rel = given("relevance_test_path", "qrels_test.csv")
    if source == "csv" and not path:
      d = _get(cfg, "catalog_dir") or ""
      path = os.path.join(d, _get(cfg, "catalog_file", None) or "styles.csv")
      in_dir = lambda n: (os.path.join(d, n)
                          if os.path.isfile(os.path.join(d, n)) else None)
      train_rel = train_rel or in_dir("relevance_train.csv")
      test_rel = test_rel or in_dir("qrels_test.csv")
    if not path or not os.path.isfile(path):
      raise FileNotFoundError(f"catalog table {path!r} not found")
    cat = catalog_lib.load_catalog(
        path, columns, test_fraction=test_fraction, max_bad_fraction=max_bad)
    train, test = cat.subset("train"), cat.subset("test")
    return Sources(train, test, rel(train_rel, train), rel(test_rel, test))
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
              d, split, c, max_bad_fraction=max_bad)
    return Sources(train, test, rels.get("train"), rels.get("test"))
  raise config_lib.ConfigError(f"data.source {source!r} not in {SOURCES}")
