"""Image files of a catalog: paths resolved under its root (never outside),
checked for existence with one directory listing per directory."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dashclip_jax.data.column_batches import to_numpy

# What resolve_many finds per path (its codes).
_FILE, _ESCAPES, _MISSING, _LINK = 0, 1, 2, 3


def resolve_image_path(root: str, rel: str) -> str | None:
  """Absolute path of `rel` under `root`, or None if it escapes `root`.

  Symlinks are resolved, so a link pointing outside the root is refused too.
  """
  root = os.path.realpath(root)
  path = os.path.realpath(os.path.join(root, rel))
  if os.path.commonpath([root, path]) != root:
    return None
  return path


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
    slow = to_numpy(pc.match_substring_regex(
        rel, r"(^|/)\.\.(/|$)|(^|/)\.$|/$"))
    enc = pc.dictionary_encode(dirs)
    codes = to_numpy(enc.indices)
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
      code[rows] = kinds[to_numpy(pc.fill_null(at, len(listing.names)))]
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
