"""Writing new shopping queries for catalog products: the template writer,
the filters every writer's drafts go through, and the test-query check.

  template  hand-written templates over a product's attributes (its aisle,
            colour, gender, usage, the brand: `catalog_brands`),
            then the synonym table (`data/query_rewrite.py`: "tshirts" ->
            "tees", "for men" -> "for him") replaces words at
            `synonym_rate`: the baseline the LLM writer
            (`gpt.query_writer`) must beat.
  filters   length in words and characters; language: the share of ASCII
            letters among the non-space characters (SmolLM drifts into
            other scripts and into code or numbers now and then).
  test check  a draft that normalises to a `qrels_test.csv` query, or to
            the same set of (plural-stripped, stop-word-free) tokens, is
            dropped and counted: generated training queries must not leak
            the test queries, even reordered ("shoes men black").
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import query_rewrite

STOP_WORDS = frozenset(("a", "an", "the", "for", "of", "and", "with", "in",
                        "to", "my", "on"))
# Words that end a title's brand ("Puma Men Blue Tee"), with its colour.
GENDER_WORDS = frozenset(("men", "women", "boys", "girls", "unisex", "kids",
                          "mens", "womens", "man", "woman", "boy", "girl"))
MAX_BRAND_WORDS = 4

# Templates over the attribute slots; a template whose slot a product lacks
# is not used for it. Gender comes as "men" (before) or "for men" (after).
TEMPLATES = (
    "{gender} {colour} {type}",
    "{colour} {type} {for_gender}",
    "{brand} {type} {for_gender}",
    "{type} {for_gender}",
    "{colour} {type}",
    "{usage} {type}",
    "{brand} {colour} {type}",
    "{usage} {type} {for_gender}",
)

def token_key(text: str) -> str:
  """The near-duplicate key: sorted distinct tokens of the normalised text,
  a trailing "s" stripped, stop words dropped ("Shoes for Men" and "men
  shoe" share a key)."""
  words = {w[:-1] if len(w) > 3 and w.endswith("s") else w
           for w in query_rewrite.normalise(text).split()
           if w not in STOP_WORDS}
  return " ".join(sorted(words))


@dataclasses.dataclass(frozen=True)
class Filters:
  """What a draft must be to be kept."""
  min_words: int = 2
  max_words: int = 8
  max_chars: int = 60
  min_ascii_letter_share: float = 0.85

  def reason(self, text: str) -> str | None:
    """None if `text` passes, else the failed filter's name."""
    words = text.split()
    if not self.min_words <= len(words) <= self.max_words:
      return "words"
    if len(text) > self.max_chars:
      return "chars"
    chars = [c for c in text if not c.isspace()]
    ascii_letters = sum(c.isascii() and c.isalpha() for c in chars)
    if ascii_letters < self.min_ascii_letter_share * len(chars):
      return "language"
    return None


def clean(text: str) -> str:
  """A draft as a query: its first line, quotes, list marks and final
  punctuation dropped, spaces collapsed."""
  line = text.strip().split("\n", 1)[0]
  line = re.sub(r"^\s*(query\s*:|[-*\d.)]+\s)", "", line, flags=re.I)
  line = line.strip().strip("\"'`").rstrip(".!?,;:").strip("\"'`")
  return " ".join(line.split())


class TestQueries:
  """The test queries' exact and near (token-set) keys."""

  def __init__(self, queries: Iterable[str]):
    queries = list(queries)
    self.exact = {query_rewrite.normalise(q) for q in queries}
    self.near = {token_key(q) for q in queries}

  def match(self, text: str) -> str | None:
    """"exact", "near" or None."""
    if query_rewrite.normalise(text) in self.exact:
      return "exact"
    if token_key(text) in self.near:
      return "near"
    return None


def catalog_brands(catalog: catalog_lib.Catalog, min_products: int = 3
                   ) -> list[str]:
  """Each product's brand, normalised: the longest start of its title,
  before its gender or colour word and at most MAX_BRAND_WORDS words, that
  starts at least `min_products` titles' such spans ("United Colors of
  Benetton Men Blue Shirt" -> "united colors of benetton", "Puma Deccan
  Chargers Men Tee" -> "puma deccan chargers"); else the title's first word.

  One pass over the catalog's titles (not its relevance rows): 0.17 s
  for the 10,697 fashion products here, so seconds at 400K.
  """
  a = catalog.attributes
  colours = a.get("baseColour") or a.get("colour") or [""] * len(catalog)
  spans = []
  for title, colour in zip(catalog.titles, colours):
    words = query_rewrite.normalise(title).split()
    stop = GENDER_WORDS | set(query_rewrite.normalise(colour).split())
    end = next((j for j, w in enumerate(words) if w in stop), len(words))
    spans.append(words[:max(1, min(end, MAX_BRAND_WORDS))])
  starts = collections.Counter(
      " ".join(span[:n]) for span in spans for n in range(1, len(span) + 1))
  return [next((" ".join(span[:n]) for n in range(len(span), 0, -1)
                if starts[" ".join(span[:n])] >= min_products),
               span[0] if span else "") for span in spans]


def product_slots(catalog: catalog_lib.Catalog, i: int,
                  brands: Sequence[str]) -> dict[str, str]:
  """A product's template slots, normalised ("" where it has none): type
  (the aisle), colour (baseColour or colour), gender, usage, brand
  (`brands[i]`, from `catalog_brands`)."""
  a = catalog.attributes
  get = lambda *names: next((a[n][i] for n in names if n in a and a[n][i]),
                            "")
  c = int(catalog.category[i])
  norm = query_rewrite.normalise
  gender = norm(get("gender"))
  return {"type": norm(catalog.category_names[c]) if c >= 0 else "",
          "colour": norm(get("baseColour", "colour")),
          "gender": gender if gender != "unisex" else "",
          "for_gender": f"for {gender}" if gender and gender != "unisex"
                        else "",
          "usage": norm(get("usage")),
          "brand": brands[i]}


def _no_repeated_word(text: str) -> bool:
  words = text.split()
  return len(set(words)) == len(words)


def template_drafts(catalog: catalog_lib.Catalog, i: int, count: int,
                    seed: int, brands: Sequence[str],
                    synonym_rate: float = 0.7,
                    synonyms: Mapping[str, Sequence[str]] = (
                        query_rewrite.SYNONYMS)
                    ) -> list[str]:
  """`count` drafts for product i: distinct usable templates in a seeded
  order, each filled and reworded by `query_rewrite.substitute` (seeded by
  (seed, i): the same drafts however products are batched). A template is usable when
  the product has its slots and, filled, it repeats no word ("casual" usage
  before the "casual shoes" aisle)."""
  slots = product_slots(catalog, i, brands)
  usable = [t for t in TEMPLATES
            if all(slots[s] for s in re.findall(r"{(\w+)}", t))
            and _no_repeated_word(t.format(**slots))]
  rng = np.random.default_rng([seed, i])
  order = rng.permutation(len(usable))[:count]
  return [query_rewrite.substitute(usable[j].format(**slots), synonyms, rng,
                                   synonym_rate) for j in order.tolist()]
