"""The column-batch catalog loader equals the row loop (`catalog_from_rows`)
on every kind of bad row and image path, symlinks included."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import catalog_tables
from dashclip_jax.data import column_batches
from dashclip_jax.data import tables


def _assert_same(a, b):
  for field in ("ids", "titles", "category_names", "split", "images", "where",
                "attributes"):
    assert getattr(a, field) == getattr(b, field), field
  np.testing.assert_array_equal(a.category, b.category)
  assert a.bad.counts == b.bad.counts
  assert a.bad.culprits == b.bad.culprits
  assert a.bad.seen == b.bad.seen


def _rows_catalog(path, columns, root):
  header, rows = tables.read_table_rows(str(path))
  return catalog_tables.catalog_from_rows(
      rows, columns=columns, root=str(root), name=str(path), header=header,
      max_bad_fraction=1.0)


def _tree(tmp_path):
  root = tmp_path / "cat"
  (root / "images" / "sub").mkdir(parents=True)
  (root / "images" / "dir.jpg").mkdir()
  for name in ("a.jpg", "b.jpg", "c.jpg", "sub/d.jpg"):
    (root / "images" / name).write_bytes(b"jpeg")
  outside = tmp_path / "outside.jpg"
  outside.write_bytes(b"jpeg")
  os.symlink(outside, root / "images" / "out_link.jpg")
  os.symlink(root / "images" / "a.jpg", root / "images" / "in_link.jpg")
  os.symlink(root / "images", root / "linked_dir")
  return root, outside


LINES = [
    "1,One,shirt,images/a.jpg,train,red",
    "2,,shirt,images/b.jpg,train,red",            # empty title
    "2,Two,shoe,images/b.jpg,test,blue",           # id 2 kept here
    "2,Two again,shoe,images/c.jpg,train,blue",    # duplicate id
    ",No id,shirt,images/a.jpg,train,red",         # missing id
    "3,Three,shirt,images/missing.jpg,train,red",  # missing image
    "3,Three,shirt,images/c.jpg,,red",             # id 3 kept, hash split
    "4,Four,,images/../images/a.jpg,train,red",    # '..' inside the root
    "5,Five,hat,../outside.jpg,train,red",         # escapes
    "6,Six,hat,{outside},train,red",               # absolute, escapes
    "7,Seven,hat,{root}/images/c.jpg,train,red",   # absolute, inside
    "8,Eight,hat,images/out_link.jpg,train,red",   # symlink out: escapes
    "9,Nine,hat,images/in_link.jpg,train,red",     # symlink in: kept
    "10,Ten,hat,linked_dir/sub/d.jpg,train,red",   # linked directory
    "11,Eleven,hat,images/dir.jpg,train,red",      # a directory
    "12,Twelve,hat,nodir/x.jpg,train,red",         # no such directory
    "13,Thirteen,hat,,train,red",                  # empty image path
    "14,Fourteen,hat,images/sub/,train,red",       # ends in a slash
    "15,Fifteen,hat,images/./sub/d.jpg,train,red",
    "16,Sixteen,hat,images/a.jpg,train,red,extra",  # malformed
    "17,Seventeen,hat,images//b.jpg,train,red",
]


@pytest.mark.parametrize("regular", [True, False])
def test_csv_catalog_matches_the_row_loop(tmp_path, monkeypatch, regular):
  root, outside = _tree(tmp_path)
  path = root / "catalog.csv"
  lines = [l for l in LINES if not (regular and l.endswith("extra"))]
  path.write_text("id,title,category,image,split,colour\n" + "\n".join(
      lines).format(root=root, outside=outside) + "\n")
  if regular:  # Read by pyarrow alone.
    monkeypatch.setattr(column_batches, "_python_csv_batches", None)
  columns = catalog_lib.CatalogColumns(extra=("colour",))
  cat = catalog_tables.load_catalog(str(path), columns, max_bad_fraction=1.0)
  _assert_same(cat, _rows_catalog(path, columns, root))
  assert cat.ids == ["1", "2", "3", "4", "7", "9", "10", "15", "17"]
  assert cat.images[cat.ids.index("10")] == str(root / "images/sub/d.jpg")
  assert cat.bad.counts["path escapes catalog root"] == 3


def test_parquet_catalog_with_template_and_int_ids_matches(tmp_path):
  root, _ = _tree(tmp_path)
  for i in (1, 2, 5):
    (root / "images" / f"{i}.jpg").write_bytes(b"jpeg")
  path = root / "cat.parquet"
  pq.write_table(pa.table({
      "id": pa.array([1, 2, 3, 2, 5, None], pa.int64()),
      "productDisplayName": ["a", "b", "c", "d", " ", "f"],
      "articleType": ["x", "y", None, "x", "y", "z"],
  }), path)
  columns = catalog_lib.CatalogColumns(
      title="productDisplayName", category="articleType", image=None,
      split=None, image_template="images/{id}.jpg")
  cat = catalog_tables.load_catalog(str(path), columns, max_bad_fraction=1.0)
  _assert_same(cat, _rows_catalog(path, columns, root))
  assert cat.ids == ["1", "2"] and cat.where == ["cat.parquet row 0",
                                                 "cat.parquet row 1"]


def test_latin1_titles_are_counted_and_named_not_replaced(tmp_path):
  """A title saved as Latin-1 is skipped as undecodable text, by line, in
  both loaders (it was kept as 'Qu\ufffdchua', nothing counted); bytes in a
  column the column loader does not read change nothing. (The row loader,
  given whole rows, judges every column.)"""
  root, _ = _tree(tmp_path)
  path = root / "catalog.csv"
  path.write_bytes(
      b"id,title,category,image,split,note\n"
      b"1,One,shirt,images/a.jpg,train,\n"
      b"2,Qu\xe9chua M\xe9n,shoe,images/b.jpg,test,\n"
      b"3,Three,hat,images/c.jpg,train,\n")
  columns = catalog_lib.CatalogColumns()
  cat = catalog_tables.load_catalog(str(path), columns, max_bad_fraction=1.0)
  assert cat.ids == ["1", "3"] and cat.titles == ["One", "Three"]
  assert dict(cat.bad.counts) == {"undecodable text": 1}
  assert cat.bad.culprits == [
      "catalog.csv line 3: undecodable text (not UTF-8: column 'title' has "
      "bytes b'\\xe9' (save the file as UTF-8))"]
  _assert_same(cat, _rows_catalog(path, columns, root))
  # Read by pyarrow alone: the bad bytes are only in a column not read.
  path.write_bytes(path.read_bytes().replace(b"Qu\xe9chua M\xe9n", b"Two")
                   .replace(b"train,\n", b"train,cr\xe8me\n"))
  cat = catalog_tables.load_catalog(str(path), columns, max_bad_fraction=1.0)
  assert cat.ids == ["1", "2", "3"] and not cat.bad.counts
