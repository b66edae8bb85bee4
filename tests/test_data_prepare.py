"""`python -m dashclip_jax.data.prepare`: validated once, sharded by query,
read back equal to loading the source tables directly."""

import collections
import os
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from dashclip_jax.data import catalog_tables
from dashclip_jax.data import prepare
from dashclip_jax.data import prepared
from dashclip_jax.data import relevance_tables

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _data(tmp_path, num_products=40, num_queries=30):
  root = tmp_path / "src"
  (root / "images").mkdir(parents=True)
  lines = ["id,title,category,image,split,colour"]
  for i in range(num_products):
    (root / "images" / f"{i}.jpg").write_bytes(b"jpeg")
    lines.append(f"{i},Product {i},cat{i % 4},images/{i}.jpg,"
                 f"{'test' if i % 5 == 0 else 'train'},c{i % 3}")
  lines.append("999,Missing image,cat0,images/999.jpg,train,c0")
  (root / "catalog.csv").write_text("\n".join(lines) + "\n")
  rng = np.random.default_rng(0)
  rows = ["query_id,query,product_id,label"]
  for q in rng.integers(0, num_queries, 600):
    rows.append(f"q{q},text {q},{rng.integers(0, num_products + 2)},"
                f"{rng.integers(0, 3)}")
  rows += ["q1,other text,3,2", "q2,text 2,3,7"]  # Two bad rows.
  (root / "relevance_train.csv").write_text("\n".join(rows) + "\n")
  return root


def _pairs(rel):
  return [(rel.query_ids[q], p, l) for q, p, l in
          zip(rel.query.tolist(), rel.product.tolist(), rel.label.tolist())]


def _assert_same(a, b):
  assert a.query_ids == b.query_ids and a.queries == b.queries
  np.testing.assert_array_equal(a.query, b.query)
  np.testing.assert_array_equal(a.product, b.product)
  np.testing.assert_array_equal(a.label, b.label)


def test_prepared_tables_read_back_equal_to_the_sources(tmp_path):
  src = _data(tmp_path)
  out = tmp_path / "prepared"
  manifest = prepare.prepare(str(src / "catalog.csv"),
                             [str(src / "relevance_train.csv")], str(out),
                             num_shards=3, max_bad_fraction=0.5)
  cat = catalog_tables.load_catalog(str(src / "catalog.csv"),
                                    max_bad_fraction=0.5)
  back = catalog_tables.load_catalog(str(out))
  for field in ("ids", "titles", "category_names", "split", "images", "where",
                "attributes"):
    assert getattr(back, field) == getattr(cat, field), field
  np.testing.assert_array_equal(back.category, cat.category)
  assert back.bad.counts == {"missing image": 1}

  rel = relevance_tables.load_relevance(str(src / "relevance_train.csv"), cat,
                                        max_bad_fraction=0.5)
  table = manifest["relevance"]["relevance_train"]
  assert table["rows"] == len(rel) and sum(table["rows_per_shard"]) == len(rel)
  assert table["dropped"] == dict(rel.bad.counts)
  assert table["dropped"]["query text differs"] == 1
  assert "relevance_train.csv line " in table["first_culprits"][0]
  assert table["source"]["size"] == os.path.getsize(
      src / "relevance_train.csv")
  _assert_same(relevance_tables.load_relevance(
      str(out / "relevance_train"), back), rel)
  # Against one split, as stage 2 reads it: the same skips as the source.
  train = back.subset("train")
  from_csv = relevance_tables.load_relevance(
      str(src / "relevance_train.csv"), cat.subset("train"),
      max_bad_fraction=0.5)
  from_dir = relevance_tables.load_relevance(str(out / "relevance_train"),
                                             train, max_bad_fraction=0.5)
  assert _pairs(from_dir) == _pairs(from_csv)
  assert from_dir.query_ids == from_csv.query_ids
  # Kept pairs of test products are now the unknown ones.
  assert from_dir.bad.counts == {"unknown product": sum(
      cat.split[p] != "train" for p in rel.product.tolist())}
  assert from_dir.bad.culprits[0].startswith("relevance_train/part-")


def test_two_shard_readers_read_each_row_once(tmp_path, monkeypatch):
  src = _data(tmp_path)
  out = tmp_path / "prepared"
  prepare.prepare(str(src / "catalog.csv"), [str(src / "relevance_train.csv")],
                  str(out), num_shards=4, max_bad_fraction=0.5)
  cat = catalog_tables.load_catalog(str(out))
  whole = relevance_tables.load_relevance(str(out / "relevance_train"), cat)
  opened = []
  real_file = pq.ParquetFile
  monkeypatch.setattr(pq, "ParquetFile", lambda path, **kw: (
      opened.append(os.path.basename(path)), real_file(path, **kw))[1])
  halves = []
  for i in range(2):
    halves.append(relevance_tables.load_relevance(
        str(out / "relevance_train"), cat, shard=(i, 2)))
    assert opened == [prepared.shard_name(k, 4) for k in range(i, 4, 2)]
    opened.clear()
  assert not set(halves[0].query_ids) & set(halves[1].query_ids)
  assert (collections.Counter(_pairs(halves[0]) + _pairs(halves[1])) ==
          collections.Counter(_pairs(whole)))
  # A CSV read with the same shard keeps the same queries and pairs.
  for i, half in enumerate(halves):
    _assert_same(half, relevance_tables.load_relevance(
        str(src / "relevance_train.csv"), cat, max_bad_fraction=0.5,
        shard=(i, 2)))


def test_cli_writes_the_manifest_and_names_a_missing_file(tmp_path):
  src = _data(tmp_path, num_products=5, num_queries=3)
  (src / "relevance_train.csv").write_text(
      "query_id,query,product_id,label\nq1,a,1,2\nq2,b,2,1\n")
  prepare.main([f"--catalog={src / 'catalog.csv'}",
                f"--relevance={src / 'relevance_train.csv'}",
                f"--out={tmp_path / 'out'}", "--num_shards=2",
                "--max_bad_fraction=0.5"])
  assert os.path.isfile(tmp_path / "out" / "relevance_train" /
                        "part-00001-of-00002.parquet")
  proc = subprocess.run(
      [sys.executable, "-m", "dashclip_jax.data.prepare",
       f"--catalog={tmp_path / 'nope.csv'}", f"--out={tmp_path / 'o'}"],
      capture_output=True, text=True, cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines() == [
      f"prepare: error: {tmp_path / 'nope.csv'}: no such file"]
  with pytest.raises(SystemExit, match="num_shards=0"):
    prepare.main([f"--catalog={src / 'catalog.csv'}", "--num_shards=0",
                  f"--out={tmp_path / 'o'}"])


def test_prepared_source_loads_what_the_table_source_loads(tmp_path):
  """config.data.source='prepared' reads the same catalogs and relevance as
  the tables it was prepared from, and a prepared table directory may stand
  in for a relevance path of any source."""
  from dashclip_jax.data import sources  # pylint: disable=g-import-not-at-top
  src = _data(tmp_path)
  rows = (src / "relevance_train.csv").read_text().splitlines()
  test_ids = {str(i) for i in range(0, 40, 5)}
  (src / "qrels_test.csv").write_text("\n".join(
      [rows[0]] + [r for r in rows[1:] if r.split(",")[2] in test_ids]) + "\n")
  out = tmp_path / "prepared"
  prepare.prepare(str(src / "catalog.csv"),
                  [str(src / "relevance_train.csv"),
                   str(src / "qrels_test.csv")], str(out), num_shards=2,
                  max_bad_fraction=0.5)
  table = sources.load_sources(dict(
      source="table", catalog_path=str(src / "catalog.csv"),
      relevance_train_path=str(src / "relevance_train.csv"),
      relevance_test_path=str(src / "qrels_test.csv"), max_bad_fraction=0.5))
  prepared = sources.load_sources(dict(source="prepared", path=str(out),
                                       max_bad_fraction=0.5))
  mixed = sources.load_sources(dict(
      source="table", catalog_path=str(src / "catalog.csv"),
      relevance_train_path=str(out / "relevance_train"),
      relevance_test_path=str(out / "qrels_test"), max_bad_fraction=0.5))
  for got in (prepared, mixed):
    assert got.train_catalog.ids == table.train_catalog.ids
    assert got.test_catalog.ids == table.test_catalog.ids
    assert got.train_catalog.titles == table.train_catalog.titles
    _assert_same(got.train_relevance, table.train_relevance)
    _assert_same(got.test_relevance, table.test_relevance)
  assert len(table.test_relevance) > 10


def test_prepared_source_without_a_manifest_is_one_line(tmp_path):
  from dashclip_jax.data import sources  # pylint: disable=g-import-not-at-top
  with pytest.raises(FileNotFoundError, match="no prepared directory"):
    sources.load_sources(dict(source="prepared", path=str(tmp_path)))


def test_a_directory_without_or_with_a_foreign_manifest_fails_naming_it(
    tmp_path):
  with pytest.raises(FileNotFoundError,
                     match=r"no manifest.json; not a directory written by "):
    prepared.read_catalog(str(tmp_path))
  (tmp_path / "manifest.json").write_text('{"format": "other/1"}')
  with pytest.raises(ValueError, match=r"manifest.json: format 'other/1', "
                     r"expected"):
    prepared.read_catalog(str(tmp_path))
