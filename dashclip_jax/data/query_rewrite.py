"""Rewording shopping queries with a synonym table: "navy blue tshirts for
men" -> "navy tees for him".

Two users: the curation's template writer (`curation/query_writers.py`)
fills templates with catalog words and rewords them, and stage 2 can reword
its training queries on the fly (`config.data.query_rewrite_rate`), so the
query tower meets the words shoppers type as well as the catalog's.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

_NON_WORD = re.compile(r"[^0-9a-z]+")

# Normalised word or phrase -> its replacements (longest phrase first).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "for men": ("for him", "for guys", "for gents"),
    "for women": ("for her", "for ladies", "for a woman"),
    "for boys": ("for a boy", "for young boys"),
    "for girls": ("for a girl", "for young girls"),
    "men": ("mens", "male", "gents"),
    "women": ("womens", "ladies", "female"),
    "tshirts": ("tees", "tee", "t shirt"),
    "shirts": ("shirt", "button down"),
    "sweatshirts": ("hoodie", "sweatshirt"),
    "sweaters": ("jumper", "pullover"),
    "trousers": ("pants", "slacks"),
    "track pants": ("joggers", "trackies"),
    "jeans": ("denims", "denim"),
    "shorts": ("half pants", "short pants"),
    "casual shoes": ("sneakers", "everyday shoes"),
    "sports shoes": ("trainers", "running shoes"),
    "formal shoes": ("office shoes", "dress shoes"),
    "flip flops": ("slippers", "chappals"),
    "handbags": ("purse", "bag"),
    "watches": ("watch", "wrist watch"),
    "sunglasses": ("shades", "sunnies"),
    "kurtas": ("kurta", "ethnic top"),
    "tops": ("top", "blouse"),
    "heels": ("high heels", "pumps"),
    "navy blue": ("navy", "dark blue"),
    "grey": ("gray",),
    "off white": ("cream",),
    "multi": ("multicolour", "colourful"),
    "sports": ("gym", "workout"),
    "formal": ("office", "work"),
    "casual": ("everyday", "daily wear"),
    "ethnic": ("traditional", "festive"),
}


def normalise(text: str) -> str:
  """Lower case, runs of non-alphanumerics -> one space, stripped."""
  return _NON_WORD.sub(" ", text.lower()).strip()


def substitute(text: str, synonyms: Mapping[str, Sequence[str]],
               rng: np.random.Generator, rate: float) -> str:
  """Replaces words and two-word phrases of normalised `text` found in
  `synonyms` (a phrase before its words), each with probability `rate`, by
  one of its synonyms (a seeded choice)."""
  words, out, i = normalise(text).split(), [], 0
  while i < len(words):
    for n in (2, 1):
      key = " ".join(words[i:i + n])
      if len(words[i:i + n]) == n and key in synonyms:
        # Both draws always happen: the stream does not depend on `rate`.
        use, pick = rng.random() < rate, rng.integers(len(synonyms[key]))
        out.append(synonyms[key][pick] if use else key)
        i += n
        break
    else:
      out.append(words[i])
      i += 1
  return " ".join(out)
