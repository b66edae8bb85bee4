"""Hand-written paraphrased shopping queries, each with the constraints it
means (`PARAPHRASES`, read from `paraphrase_queries.tsv` beside this file).

The fashion catalog's own queries use its words ("men navy blue shirts");
real users paraphrase ("navy shirt for him", "ladies purse"). Each
`Paraphrase` stores its text and the structured constraints it stands for
(product type, optional gender, colour, usage, brand), so it is labelled with
the same rule as the catalog's queries (`paraphrase_labels.py`); no paraphrase
names a sub-brand ("ADIDAS Originals"), which that rule would not tell apart.
"""

from __future__ import annotations

import dataclasses
import pathlib


@dataclasses.dataclass(frozen=True)
class Paraphrase:
  """A free-text query and the constraints it stands for.

  Attributes:
    text: what a user would type.
    article_type: the product type (a styles.csv `articleType`).
    gender, colour, usage: optional `gender` / `baseColour` / `usage` values.
    brand: optional brand words, matched against the title's first words.
  """
  text: str
  article_type: str
  gender: str | None = None
  colour: str | None = None
  usage: str | None = None
  brand: str | None = None


def read_paraphrases(path: str | pathlib.Path) -> tuple[Paraphrase, ...]:
  """The paraphrases of a tab-separated file with the header `text,
  article_type, gender, colour, usage, brand` (an empty or missing
  trailing cell is no constraint; lines starting with '#' are comments)."""
  path = pathlib.Path(path)
  lines = [(n, l.split("\t")) for n, l in
           enumerate(path.read_text().splitlines(), start=1)
           if l.strip() and not l.startswith("#")]
  fields = [f.name for f in dataclasses.fields(Paraphrase)]
  if not lines:
    raise ValueError(f"{path}: empty, expected the header {fields}")
  (_, header), *rows = lines
  if header != fields:
    raise ValueError(f"{path}: header {header}, expected {fields}")
  out = []
  for n, row in rows:
    if len(row) > len(fields) or len(row) < 2 or not row[0] or not row[1]:
      raise ValueError(f"{path}: line {n} {row!r} needs at most "
                       f"{len(fields)} tab-separated cells, text and "
                       "article_type set")
    row += [""] * (len(fields) - len(row))  # Trailing empty cells may go.
    out.append(Paraphrase(row[0], row[1], *(c or None for c in row[2:])))
  return tuple(out)


# The table is data, kept beside this module: 79 queries across tops,
# bottoms, innerwear, footwear, accessories, personal care and brands.
PARAPHRASES: tuple[Paraphrase, ...] = read_paraphrases(
    pathlib.Path(__file__).with_name("paraphrase_queries.tsv"))
