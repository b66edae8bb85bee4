"""The graded label rule of a paraphrase for a fashion product.

The rule of the catalog's own queries (../shared/data/fashion/README.md):

  a query names a product type (articleType) and optionally gender, colour,
  usage and brand. Label 2: of that type and meeting every other constraint
  (a Men/Women query also accepts Unisex). Label 1: of that type with exactly
  one other constraint unmet, or of a sibling type (same subCategory) meeting
  all others. Label 0: anything else.

Brand: the title's first words are the brand words (case-insensitive,
apostrophes dropped, so "levis" matches "Levi's"). The catalog's own labeler
treats sub-brands ("ADIDAS Originals", "Arrow Sport") as other brands; this
rule does not.
"""

from __future__ import annotations

import collections
from typing import Mapping, Sequence

import numpy as np

from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.evaluation import paraphrase_queries as queries_lib

# A Men/Women query also accepts products for both.
_ALSO_ACCEPTS = {"Men": "Unisex", "Women": "Unisex"}


def _words(text: str) -> list[str]:
  return text.lower().replace("'", "").split()


def brand_matches(brand: str, title: str) -> bool:
  """Whether `title` starts with the words of `brand` (case-insensitive)."""
  want = _words(brand)
  return bool(want) and _words(title)[:len(want)] == want


def unmet_constraints(p: queries_lib.Paraphrase,
                      product_row: Mapping[str, str]) -> int:
  """How many gender/colour/usage/brand constraints the product misses."""
  unmet = 0
  if p.gender is not None:
    gender = product_row["gender"]
    unmet += gender not in (p.gender, _ALSO_ACCEPTS.get(p.gender))
  if p.colour is not None:
    unmet += product_row["baseColour"] != p.colour
  if p.usage is not None:
    unmet += product_row["usage"] != p.usage
  if p.brand is not None:
    unmet += not brand_matches(p.brand, product_row["productDisplayName"])
  return unmet


def label(p: queries_lib.Paraphrase, product_row: Mapping[str, str],
          sibling_of: Mapping[str, str]) -> int:
  """Graded relevance (0, 1, 2) of a product for a paraphrase (README rule).

  Args:
    p: the query.
    product_row: styles.csv fields of the product: articleType, subCategory,
      gender, baseColour, usage, productDisplayName.
    sibling_of: articleType -> its subCategory (see `subcategory_of`); a
      product of another type in the query type's subCategory is a sibling.

  Returns:
    2, 1 or 0.
  """
  unmet = unmet_constraints(p, product_row)
  if product_row["articleType"] == p.article_type:
    return {0: 2, 1: 1}.get(unmet, 0)
  sibling = (p.article_type in sibling_of and
             product_row["subCategory"] == sibling_of[p.article_type])
  return 1 if sibling and unmet == 0 else 0


def subcategory_of(rows: Sequence[Mapping[str, str]]) -> dict[str, str]:
  """articleType -> its most common subCategory (ties: alphabetical).

  A few types sit in two subCategories (Sandals: "Sandal" and 2 in "Shoes");
  the catalog's labels take the type's main one, and so does this.
  """
  counts = collections.defaultdict(collections.Counter)
  for r in rows:
    counts[r["articleType"]][r["subCategory"]] += 1
  return {t: min(c, key=lambda s: (-c[s], s)) for t, c in counts.items()}


def product_rows(catalog: catalog_lib.Catalog) -> list[dict[str, str]]:
  """The label rule's fields of every product (styles.csv column names)."""
  a = catalog.attributes
  names = catalog.category_names
  return [{"articleType": names[c] if c >= 0 else "",
           "subCategory": a["subCategory"][i], "gender": a["gender"][i],
           "baseColour": a["baseColour"][i], "usage": a["usage"][i],
           "productDisplayName": catalog.titles[i]}
          for i, c in enumerate(np.asarray(catalog.category))]


def label_matrix(queries: Sequence[queries_lib.Paraphrase],
                 rows: Sequence[Mapping[str, str]],
                 sibling_of: Mapping[str, str]) -> np.ndarray:
  """int8 (Q, N) labels of every query for every product row."""
  by_type = collections.defaultdict(list)
  by_sub = collections.defaultdict(list)
  for j, r in enumerate(rows):
    by_type[r["articleType"]].append(j)
    by_sub[r["subCategory"]].append(j)
  out = np.zeros((len(queries), len(rows)), np.int8)
  for i, p in enumerate(queries):
    # Only the query's type and its subCategory can score above 0.
    cand = set(by_type[p.article_type])
    cand.update(by_sub.get(sibling_of.get(p.article_type), ()))
    for j in cand:
      out[i, j] = label(p, rows[j], sibling_of)
  return out


def check_paraphrases(queries: Sequence[queries_lib.Paraphrase],
                      rows: Sequence[Mapping[str, str]]) -> None:
  """Raises ValueError if a query names a value the catalog does not have."""
  values = {f: {r[f] for r in rows}
            for f in ("articleType", "gender", "baseColour", "usage")}
  for p in queries:
    for field, v in (("articleType", p.article_type), ("gender", p.gender),
                     ("baseColour", p.colour), ("usage", p.usage)):
      if v is not None and v not in values[field]:
        raise ValueError(f"paraphrase {p.text!r}: {field} {v!r} is not in "
                         "the catalog")
    if p.brand is not None and not any(
        brand_matches(p.brand, r["productDisplayName"]) for r in rows):
      raise ValueError(f"paraphrase {p.text!r}: no title starts with brand "
                       f"{p.brand!r}")
