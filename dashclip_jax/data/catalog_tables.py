"""Catalogs read from CSV/Parquet tables: rows validated into a `Catalog`,
bad ones skipped and counted (`bad_records.py`): malformed CSV rows,
missing ids, duplicate ids, empty titles, missing images and image paths
that escape the catalog's root directory."""

from __future__ import annotations

import os
import string
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dashclip_jax.data import bad_records as br
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import column_batches
from dashclip_jax.data import image_files
from dashclip_jax.data import images as images_lib
from dashclip_jax.data import prepared
from dashclip_jax.data import tables
from dashclip_jax.data.column_batches import to_numpy


def catalog_from_rows(
    rows: Iterable[tables.Row],
    *,
    columns: catalog_lib.CatalogColumns,
    root: str | None,
    name: str,
    header: Sequence[str] | None = None,
    test_fraction: float = 0.1,
    max_bad_fraction: float = 0.01,
    check_images: bool = False,
) -> catalog_lib.Catalog:
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
  files = None
  for where, row, error in rows:
    if row is None:
      bad.bad(where, tables.error_reason(error), error)
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
      if files is None:
        files = image_files.ImageFiles(root)
      img, is_file = files.resolve(rel)
      if img is None:
        bad.bad(where, "path escapes catalog root", f"id {pid}: {rel!r}")
        continue
      if not is_file:
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
    splits.append(split or catalog_lib.hash_split(pid, test_fraction))
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
  return catalog_lib.Catalog(
      name=name, ids=ids, titles=titles, category=category,
      category_names=names, split=splits, images=images, where=where_l,
      attributes=extra, bad=bad)


def catalog_from_batches(
    batches: Iterable[column_batches.ColumnBatch],
    *,
    columns: catalog_lib.CatalogColumns,
    root: str,
    name: str,
    has_split: bool,
    has_category: bool,
    test_fraction: float = 0.1,
    max_bad_fraction: float = 0.01,
) -> catalog_lib.Catalog:
  """`catalog_from_rows` on column batches, for image-path catalogs.

  The same skips, reasons and culprits, with Python per directory and per
  named culprit instead of per row: a row is judged malformed, missing id,
  duplicate id (an earlier row of its id was kept), empty title, missing
  image (no path), path escapes catalog root, missing image (no file), in
  that order, so the row kept for an id is its first row that passes the
  row's own checks (title and image).
  """
  batches = [b for b in batches if len(b)]
  if not batches:
    raise br.BadDataError(f"{name}: no usable products. catalog {name}: "
                          "0 records, none bad.")
  col = lambda c: pa.concat_arrays([b.columns[c] for b in batches])
  starts = np.array([b.start for b in batches])
  n = int(starts[-1]) + len(batches[-1])

  def where(i: int) -> str:
    b = int(np.searchsorted(starts, i, "right")) - 1
    return batches[b].where(i - int(starts[b]))

  malformed = np.zeros(n, bool)
  errors = {b.start + i: e for b in batches for i, e in b.errors.items()}
  malformed[list(errors)] = True
  undecodable = np.zeros(n, bool)
  undecodable[[i for i, e in errors.items()
               if tables.error_reason(e) == tables.UNDECODABLE]] = True
  pid, title = col(columns.id), col(columns.title)
  rel = (col(columns.image) if columns.image
         else _format_id(columns.image_template, pid))
  # The row's own checks: 1 empty title, 2 no path, 3 escapes, 4 no file.
  own = np.where(to_numpy(pc.equal(title, "")), 1, 0).astype(np.int8)
  own[(own == 0) & to_numpy(pc.equal(rel, ""))] = 2
  paths = pa.nulls(n, pa.string())
  has_path = np.flatnonzero(own == 0)
  if len(has_path):
    found, code = image_files.ImageFiles(root).resolve_many(rel.take(has_path))
    own[has_path] = np.where(code == 0, 0, code + 2)
    paths = _scatter(n, has_path, found)
  candidate = ~malformed & to_numpy(pc.not_equal(pid, ""))
  ids_enc = pc.dictionary_encode(pid)
  id_code = to_numpy(ids_enc.indices)
  # The kept row of each id: its first row passing its own checks.
  passing = np.flatnonzero(candidate & (own == 0))
  first = np.full(len(ids_enc.dictionary), n, np.int64)
  uniq, at = np.unique(id_code[passing], return_index=True)
  first[uniq] = passing[at]
  row = np.arange(n)
  kept = candidate & (row == first[id_code])
  duplicate = candidate & (row > first[id_code])
  reason = np.select(
      [undecodable, malformed, ~candidate, duplicate, candidate & (own > 0)],
      [8, 1, 2, 3, own.astype(np.int64) + 3], 0)
  reasons = (tables.MALFORMED, "missing id", "duplicate id", "empty title",
             "missing image", "path escapes catalog root", "missing image",
             tables.UNDECODABLE)
  cell = lambda a, i: a[i].as_py()

  def detail(i: int, code: int) -> str:
    if code in (1, 8):
      return errors[i]
    if code == 2:
      return ""
    if code in (3, 4):
      return f"id {cell(pid, i)}"
    if code == 5:
      return f"id {cell(pid, i)}: empty image path"
    if code == 6:
      return f"id {cell(pid, i)}: {cell(rel, i)!r}"
    return f"id {cell(pid, i)}: {cell(rel, i)}"

  bad = br.BadRecords(f"catalog {name}", max_bad_fraction=max_bad_fraction)
  column_batches.report_bad(bad, reasons, reason, detail, where)
  if not kept.any():
    raise br.BadDataError(f"{name}: no usable products. {bad.summary()}")
  bad.check()

  keep = np.flatnonzero(kept)
  ids = pid.take(keep).to_pylist()
  splits = (col(columns.split).take(keep).to_pylist() if has_split
            else [""] * len(keep))
  for i in (np.flatnonzero(pc.equal(pa.array(splits, pa.string()), "")
                           .to_numpy(zero_copy_only=False)).tolist()):
    splits[i] = catalog_lib.hash_split(ids[i], test_fraction)
  cats = (col(columns.category).take(keep) if has_category
          else pa.array([""] * len(keep), pa.string()))
  names = sorted(c for c in pc.unique(cats).to_pylist() if c)
  category = to_numpy(pc.fill_null(
      pc.index_in(cats, pa.array(names, pa.string())), -1)).astype(np.int32)
  attributes = {c: (col(c).take(keep).to_pylist()
                    if c in batches[0].columns else [""] * len(keep))
                for c in columns.extra}
  where_l = []
  bounds = np.searchsorted(keep, np.append(starts, n))
  for b, lo, hi in zip(batches, bounds[:-1], bounds[1:]):
    where_l += b.wheres(keep[lo:hi] - b.start)
  return catalog_lib.Catalog(
      name=name, ids=ids, titles=title.take(keep).to_pylist(),
      category=category, category_names=names, split=splits,
      images=paths.take(keep).to_pylist(), where=where_l,
      attributes=attributes, bad=bad)


def _scatter(n: int, rows: np.ndarray, values) -> Any:
  """String array (n,): `values` at `rows`, null elsewhere."""
  slot = np.full(n, -1, np.int64)
  slot[rows] = np.arange(len(rows))
  return values.take(pa.array(slot, mask=slot < 0))


def _format_id(template: str, ids) -> Any:
  """`template.format(id=i)` for each id of a string array."""
  fields = list(string.Formatter().parse(template))
  if all(f in (None, "id") and not spec and not conv
         for _, f, spec, conv in fields):
    parts = []
    for literal, f, _, _ in fields:
      parts += [pa.scalar(literal, pa.string())] + (
          [ids] if f else [])
    return pc.binary_join_element_wise(*parts, "")
  return pa.array([template.format(id=i) for i in ids.to_pylist()],
                  pa.string())


def load_catalog(
    path: str,
    columns: catalog_lib.CatalogColumns | None = None,
    *,
    root: str | None = None,
    test_fraction: float = 0.1,
    max_bad_fraction: float = 0.01,
    check_images: bool = False,
) -> catalog_lib.Catalog:
  """Reads a CSV/Parquet catalog.

  Args:
    path: the table, e.g. ".../fashion/styles.csv" or "catalog.parquet", or
      a directory written by `python -m dashclip_jax.data.prepare` (its
      catalog, validated there: the other arguments are not used).
    columns: column mapping; default `catalog.FASHION_COLUMNS` for a file
      named styles.csv, else `catalog.CatalogColumns()` (id, title, category,
      image, split).
    root: image paths are relative to it and may not escape it; default: the
      table's directory.
    test_fraction, max_bad_fraction, check_images: see `catalog_from_rows`.

  Returns:
    The Catalog (all splits; use `.subset("train")`).
  """
  if os.path.isdir(path):
    return prepared.read_catalog(path)
  if columns is None:
    columns = (catalog_lib.FASHION_COLUMNS
               if os.path.basename(path) == "styles.csv"
               else catalog_lib.CatalogColumns())
  root = root if root is not None else os.path.dirname(os.path.abspath(path))
  if not (columns.image_bytes or check_images):
    header = tables.read_header(path)
    needed = [columns.id, columns.title] + (
        [columns.image] if columns.image else [])
    tables.require_columns(path, header, needed)
    has_split = columns.split is not None and columns.split in header
    has_category = columns.category is not None and columns.category in header
    read = needed + [c for c in (columns.category if has_category else None,
                                 columns.split if has_split else None,
                                 *columns.extra) if c and c in header]
    return column_batches.with_column_batches(
        path, list(dict.fromkeys(read)), lambda batches: catalog_from_batches(
            batches, columns=columns, root=root, name=path,
            has_split=has_split, has_category=has_category,
            test_fraction=test_fraction, max_bad_fraction=max_bad_fraction))
  header, rows = tables.read_table_rows(path)
  return catalog_from_rows(
      rows, columns=columns, root=root, name=path, header=header,
      test_fraction=test_fraction, max_bad_fraction=max_bad_fraction,
      check_images=check_images)
