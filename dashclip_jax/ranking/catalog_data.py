"""What the sessions run over: one catalog split, its queries with their
true labels, and the product attributes users and the DCN read.

`load(config)` -> `RankingData`. The attributes are integer codes over
a sorted vocabulary each: type (the aisle: fashion's articleType), brand,
colour, gender and usage, read from the catalog columns `config.attributes`
names (a brand column "" takes the title's words before its gender word).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping

import numpy as np

from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import sources as sources_lib
from dashclip_jax.runtime import config_files

ATTRIBUTES = ("type", "brand", "colour", "gender", "usage")
# Words that end a fashion title's brand ("U.S. Polo Assn. Men Blue Shirt").
GENDER_WORDS = frozenset({"men", "women", "unisex", "boys", "girls", "kids"})
UNISEX = "Unisex"


@dataclasses.dataclass
class RankingData:
  """Products, queries and true labels, index-aligned.

  Attributes:
    catalog: the split's products (rows = product indices everywhere).
    codes: attribute -> int32 (N,) code.
    names: attribute -> its vocabulary (code -> value).
    query_ids, queries: Q query ids and texts.
    labels: int8 (Q, N) true labels; pairs the relevance data omits hold
      `unjudged_label`.
    judged: bool (Q, N), which pairs the relevance data lists (all of them
      on a complete qrels split: there unlisted pairs are label 0 by the
      data's own definition, and `judged` is all True).
    description: one line for the report.
  """
  catalog: catalog_lib.Catalog
  codes: dict[str, np.ndarray]
  names: dict[str, list[str]]
  query_ids: list[str]
  queries: list[str]
  labels: np.ndarray
  judged: np.ndarray
  description: str

  @property
  def num_products(self) -> int:
    return len(self.catalog)

  def fingerprint(self) -> str:
    """sha256 of everything the simulation reads (the cache key's data)."""
    h = hashlib.sha256()
    for part in (self.catalog.ids, self.catalog.titles, self.query_ids,
                 self.queries):
      h.update("\x1f".join(part).encode())
    for a in ATTRIBUTES:
      h.update(np.asarray(self.codes[a], np.int32).tobytes())
      h.update("\x1f".join(self.names[a]).encode())
    h.update(self.labels.tobytes())
    return h.hexdigest()


def brand_from_title(title: str) -> str:
  """The words before the title's first gender word; else its first word."""
  words = title.split()
  for i, w in enumerate(words):
    if w.lower() in GENDER_WORDS and i > 0:
      return " ".join(words[:i])
  return words[0] if words else ""


def _encode(values: list[str]) -> tuple[np.ndarray, list[str]]:
  names = sorted(set(values))
  lookup = {v: i for i, v in enumerate(names)}
  return np.array([lookup[v] for v in values], np.int32), names


def attribute_values(catalog: catalog_lib.Catalog,
                     columns: Mapping[str, str]) -> dict[str, list[str]]:
  """attribute -> (N,) string values from `columns` (see module doc)."""
  cats = catalog.category_names
  out = {"type": [cats[c] if c >= 0 else "" for c in catalog.category]}
  for attr in ("brand", "colour", "gender", "usage"):
    col = columns.get(attr, "")
    if attr == "brand" and not col:
      out[attr] = [brand_from_title(t) for t in catalog.titles]
      continue
    if col not in catalog.attributes:
      raise config_files.ConfigError(
          f"config.attributes.{attr}={col!r}: {catalog.name} has no such "
          f"column (it has {sorted(catalog.attributes)})")
    out[attr] = list(catalog.attributes[col])
  return out


def load(config: Any) -> RankingData:
  """The ranking job's data: the products and queries of `config.data`'s
  split (the data block every job reads), their attributes from the
  catalog columns `config.attributes` names, and `config.sim.unjudged_label`
  for the pairs the relevance data omits (complete: the test qrels).

  Queries without a label-2 product in the split are dropped (a session for
  one would show nothing a user wants).
  """
  unjudged_label = config.sim.unjudged_label
  if unjudged_label not in (0, 1, 2):
    raise config_files.ConfigError(
        f"config.sim.unjudged_label must be 0, 1 or 2, got {unjudged_label}")
  split = config.data.split
  catalog, rel = sources_lib.load_sources(config.data).of_split(split)
  complete = split == "test"
  if rel is None:
    raise FileNotFoundError(f"config.data: no relevance file for the "
                            f"{split} split of {catalog.name}")
  values = attribute_values(catalog, config.attributes)
  encoded = {a: _encode(values[a]) for a in ATTRIBUTES}
  q, n = rel.num_queries, len(catalog)
  judged = np.full((q, n), complete, bool)
  judged[rel.query, rel.product] = True
  labels = np.where(judged, 0, unjudged_label).astype(np.int8)
  labels[rel.query, rel.product] = rel.label
  keep = (labels == 2).any(axis=1)
  dropped = int((~keep).sum())
  what = ("complete qrels" if complete else
          f"judged sample, unjudged pairs label {unjudged_label}")
  return RankingData(
      catalog=catalog,
      codes={a: encoded[a][0] for a in ATTRIBUTES},
      names={a: encoded[a][1] for a in ATTRIBUTES},
      query_ids=[x for x, k in zip(rel.query_ids, keep) if k],
      queries=[x for x, k in zip(rel.queries, keep) if k],
      labels=labels[keep], judged=judged[keep],
      description=(f"{n} products ({catalog.name}) x {int(keep.sum())} "
                   f"queries ({rel.name}; {what})"
                   + (f"; {dropped} queries without a label-2 product "
                      "dropped" if dropped else "")))
