"""The labeler interface: (query, product) pairs -> label probabilities.

A labeler sees what a human judge would: the query text and the product's
catalog fields. `predict` returns float (B, 3) probabilities of labels 0
(irrelevant), 1 (moderately relevant) and 2 (highly relevant), rows summing
to 1. The cross-encoder teachers (`cross_encoder.model.Teacher`), the GPT
labeler and the OpenAI-compatible client implement it.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from dashclip_jax.data import catalog as catalog_lib

NUM_LABELS = 3
# Product fields with a name of their own; any other field name is a
# catalog attribute column (fashion: gender, baseColour, usage, ...).
TITLE, CATEGORY = "title", "category"


@runtime_checkable
class Labeler(Protocol):
  """What every teacher offers the curation loop."""

  # Names the labeler in every row it labels (`teacher_id` column).
  teacher_id: str

  def predict(self, queries: Sequence[str],
              products: Sequence[dict[str, Any]]) -> np.ndarray:
    """float32 (B, 3) label probabilities for B (query, product) pairs;
    a row of NaN for a pair it could not label (the writer skips it)."""


def product_record(catalog: catalog_lib.Catalog, i: int) -> dict[str, Any]:
  """Product `i` as the dict a labeler reads: id, title, category (the
  aisle, e.g. fashion's articleType), every attribute column, and `image`
  (a path or encoded bytes, decoded only by labelers that look at it)."""
  category = int(catalog.category[i])
  return {"product_id": catalog.ids[i], TITLE: catalog.titles[i],
          CATEGORY: catalog.category_names[category] if category >= 0 else "",
          **{k: v[i] for k, v in catalog.attributes.items()},
          "image": catalog.images[i], "where": catalog.culprit(i)}


def check_fields(catalog: catalog_lib.Catalog, fields: Sequence[str]) -> None:
  """Raises ValueError naming a field the catalog does not have."""
  known = (TITLE, CATEGORY, *catalog.attributes)
  for f in fields:
    if f not in known:
      raise ValueError(f"product field {f!r} not in the catalog "
                       f"{catalog.name}; it has {', '.join(known)}")


def product_text(product: dict[str, Any], fields: Sequence[str]) -> str:
  """The product side of a pair: the named fields' values, " | "-joined
  (empty values left out), title first when it is named first."""
  return " | ".join(str(product[f]) for f in fields if str(product.get(
      f, "") or "").strip())
