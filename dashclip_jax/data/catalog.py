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
import string
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def resolve_image_path(root: str, rel: str) -> str | None:
  """Absolute path of `rel` under `root`, or None if it escapes `root`.

  Symlinks are resolved, so a link pointing outside the root is refused too.
  """
  root = os.path.realpath(root)
  path = os.path.realpath(os.path.join(root, rel))
  if os.path.commonpath([root, path]) != root:
    return None
  return path


_FILE, _ESCAPES, _MISSING, _LINK = 0, 1, 2, 3


@dataclasses.dataclass
class _Listing:
  """One directory: its real path (None if outside the root), the names in
  it and their kinds (_FILE, _MISSING for a non-file, _LINK), or no names
  (None) when it cannot be listed."""
  real: str | None
  names: list[str] | None
  kinds: np.ndarray | None
  _index: dict[str, int] | None = None

  def kind(self, name: str) -> int:
    if self._index is None:
      self._index = {n: i for i, n in enumerate(self.names)}
    i = self._index.get(name)
    return _MISSING if i is None else int(self.kinds[i])


class ImageFiles:
  """`resolve_image_path` and `os.path.isfile` for many paths under a root.

  The root is resolved once, each directory once (realpath) and listed once
  (os.scandir; a directory entry knows if it is a regular file without a
  stat), instead of two realpath calls and a stat per product. A path whose
  last part is a symlink, that has a ".." part or lies in a directory that
  cannot be listed goes the slow way, so the answers stay those of
  `resolve_image_path` and `isfile`.
  """

  def __init__(self, root: str):
    self.root = os.path.realpath(root)
    self._dirs: dict[str, _Listing] = {}  # directory as joined -> listing

  def _listing(self, head: str) -> _Listing:
    if head not in self._dirs:
      self._dirs[head] = _scan(self.root, head)
    return self._dirs[head]

  def resolve(self, rel: str) -> tuple[str | None, bool]:
    """-> (absolute real path or None if it escapes the root, is a file)."""
    head, name = os.path.split(os.path.join(self.root, rel))
    if name in ("", ".", "..") or ".." in rel.split("/"):
      return self._slow(rel)
    listing = self._listing(head)
    kind = _LINK if listing.names is None else listing.kind(name)
    if kind == _LINK:
      return self._slow(rel)
    if listing.real is None:
      return None, False
    return os.path.join(listing.real, name), kind == _FILE

  def resolve_many(self, rel) -> tuple[Any, np.ndarray]:
    """Vectorised `resolve` of a pyarrow string array (N,) of non-empty paths.

    Returns:
      (string array (N,) of absolute real paths, null where a path escapes
      the root; int8 (N,) _FILE, _ESCAPES or _MISSING).
    Python runs per directory and per path that must go the slow way.
    """
    parts = pc.extract_regex(rel, r"^(?P<dir>.*/)?(?P<name>[^/]*)$")
    dirs, names = parts.field("dir"), parts.field("name")
    slow = _np(pc.match_substring_regex(
        rel, r"(^|/)\.\.(/|$)|(^|/)\.$|/$"))
    enc = pc.dictionary_encode(dirs)
    codes = _np(enc.indices)
    prefix = [None] * len(enc.dictionary)
    code = np.full(len(rel), _MISSING, np.int8)
    for k, d in enumerate(enc.dictionary.to_pylist()):
      listing = self._listing(os.path.join(self.root, d).rstrip("/") or "/")
      rows = np.flatnonzero(codes == k)
      if listing.names is None:
        slow[rows] = True
        continue
      at = pc.index_in(names.take(rows), pa.array(listing.names, pa.string()))
      kinds = np.append(listing.kinds, _MISSING)
      code[rows] = kinds[_np(pc.fill_null(at, len(listing.names)))]
      if listing.real is None:
        slow[rows] |= code[rows] == _LINK
        code[rows] = _ESCAPES
      else:
        prefix[k] = os.path.join(listing.real, "")
    slow |= code == _LINK
    paths = pc.binary_join_element_wise(
        pa.array(prefix, pa.string()).take(enc.indices), names, "")
    slow_rows = np.flatnonzero(slow)
    if len(slow_rows):
      fixed = [self._slow(r) for r in rel.take(slow_rows).to_pylist()]
      code[slow_rows] = [_FILE if f else _MISSING if p else _ESCAPES
                         for p, f in fixed]
      paths = paths.to_pylist()
      for i, (p, _) in zip(slow_rows.tolist(), fixed):
        paths[i] = p
      paths = pa.array(paths, pa.string())
    return paths, code

  def _slow(self, rel: str) -> tuple[str | None, bool]:
    path = resolve_image_path(self.root, rel)
    return path, path is not None and os.path.isfile(path)


def _scan(root: str, head: str) -> _Listing:
  real = os.path.realpath(head)
  if os.path.commonpath([root, real]) != root:
    real = None
  try:
    with os.scandir(head) as it:
      entries = list(it)
  except (FileNotFoundError, NotADirectoryError):
    return _Listing(real, [], np.zeros(0, np.int8))
  except OSError:
    return _Listing(real, None, None)
  kinds = np.zeros(len(entries), np.int8)  # _FILE
  for i in [i for i, e in enumerate(entries)
            if not e.is_file(follow_symlinks=False)]:
    kinds[i] = _LINK if entries[i].is_symlink() else _MISSING
  return _Listing(real, [e.name for e in entries], kinds)


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
        files = ImageFiles(root)
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


def catalog_from_batches(
    batches: Iterable[tables.ColumnBatch],
    *,
    columns: CatalogColumns,
    root: str,
    name: str,
    has_split: bool,
    has_category: bool,
    test_fraction: float = 0.1,
    max_bad_fraction: float = 0.01,
) -> Catalog:
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
  own = np.where(_np(pc.equal(title, "")), 1, 0).astype(np.int8)
  own[(own == 0) & _np(pc.equal(rel, ""))] = 2
  paths = pa.nulls(n, pa.string())
  has_path = np.flatnonzero(own == 0)
  if len(has_path):
    found, code = ImageFiles(root).resolve_many(rel.take(has_path))
    own[has_path] = np.where(code == 0, 0, code + 2)
    paths = _scatter(n, has_path, found)
  candidate = ~malformed & _np(pc.not_equal(pid, ""))
  ids_enc = pc.dictionary_encode(pid)
  id_code = _np(ids_enc.indices)
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
  tables.report_bad(bad, reasons, reason, detail, where)
  if not kept.any():
    raise br.BadDataError(f"{name}: no usable products. {bad.summary()}")
  bad.check()

  keep = np.flatnonzero(kept)
  ids = pid.take(keep).to_pylist()
  splits = (col(columns.split).take(keep).to_pylist() if has_split
            else [""] * len(keep))
  for i in (np.flatnonzero(pc.equal(pa.array(splits, pa.string()), "")
                           .to_numpy(zero_copy_only=False)).tolist()):
    splits[i] = hash_split(ids[i], test_fraction)
  cats = (col(columns.category).take(keep) if has_category
          else pa.array([""] * len(keep), pa.string()))
  names = sorted(c for c in pc.unique(cats).to_pylist() if c)
  category = _np(pc.fill_null(pc.index_in(cats, pa.array(names, pa.string())),
                              -1)).astype(np.int32)
  attributes = {c: (col(c).take(keep).to_pylist()
                    if c in batches[0].columns else [""] * len(keep))
                for c in columns.extra}
  where_l = []
  bounds = np.searchsorted(keep, np.append(starts, n))
  for b, lo, hi in zip(batches, bounds[:-1], bounds[1:]):
    where_l += b.wheres(keep[lo:hi] - b.start)
  return Catalog(name=name, ids=ids, titles=title.take(keep).to_pylist(),
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


def _np(array) -> np.ndarray:
  return array.to_numpy(zero_copy_only=False)


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
    path: the table, e.g. ".../fashion/styles.csv" or "catalog.parquet", or
      a directory written by `python -m dashclip_jax.data.prepare` (its
      catalog, validated there: the other arguments are not used).
    columns: column mapping; default `FASHION_COLUMNS` for a file named
      styles.csv, else `CatalogColumns()` (id, title, category, image, split).
    root: image paths are relative to it and may not escape it; default: the
      table's directory.
    test_fraction, max_bad_fraction, check_images: see `catalog_from_rows`.

  Returns:
    The Catalog (all splits; use `.subset("train")`).
  """
  if os.path.isdir(path):
    from dashclip_jax.data import prepare  # pylint: disable=g-import-not-at-top
    return prepare.read_catalog(path)
  if columns is None:
    columns = (FASHION_COLUMNS if os.path.basename(path) == "styles.csv"
               else CatalogColumns())
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
    return tables.with_column_batches(
        path, list(dict.fromkeys(read)), lambda batches: catalog_from_batches(
            batches, columns=columns, root=root, name=path,
            has_split=has_split, has_category=has_category,
            test_fraction=test_fraction, max_bad_fraction=max_bad_fraction))
  header, rows = tables.read_table_rows(path)
  return catalog_from_rows(
      rows, columns=columns, root=root, name=path, header=header,
      test_fraction=test_fraction, max_bad_fraction=max_bad_fraction,
      check_images=check_images)
