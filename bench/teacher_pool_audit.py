r"""Audit a curation's teacher labels on its own candidate pool (issue 30).

  python bench/teacher_pool_audit.py --workdir=/tmp/cur10
  python bench/teacher_pool_audit.py --workdir=/tmp/cur10 --aisle_field=subCategory

The curation report scores the teacher on a sample of the true table's
pairs (every label-2 product of a query, 15 label-1s, 10 hard and 10 random
0s). The expanded set is made of other pairs: each unlabelled query's
nearest products. This audit labels those pairs with the fashion catalog's
own rule (../shared/data/fashion/README.md; `paraphrase_labels.label`),
which needs each train query's constraints: its type is the type of its
label-2 products, and its gender, colour and usage words are read off its
text (a colour or usage only where its label-2 products all share it); the
words left before the type are the brand. How well that parse reproduces
the table's labels is printed first.

Then, over the teacher rows of `<workdir>/expanded`: the (true, teacher)
counts, each label's precision and recall, and how the products of the
commonest error relate to their query (same type, a sibling type in the
query type's subCategory, another type; which constraints they miss).
With --aisle_field, the same after `label_shards.aisle_consistent`. With
--write_true_set=DIR, the set with its teacher rows relabelled by the
rule, a perfect teacher on the same pairs, for stage 2
(`data.relevance_train_path=DIR`).

A Python pass per row: an audit of a ~100K-row sample, not a pipeline step.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dashclip_jax.curation import label_shards
from dashclip_jax.evaluation import paraphrase_labels as labels_lib
from dashclip_jax.evaluation import paraphrase_queries as queries_lib

GENDER_WORDS = {"men": "Men", "women": "Women", "boys": "Boys",
                "girls": "Girls", "unisex": "Unisex"}


def _find(words: list[str], phrase: str) -> int:
  """Start of `phrase`'s words in `words`, or -1."""
  p = phrase.lower().split()
  for i in range(len(words) - len(p) + 1):
    if words[i:i + len(p)] == p:
      return i
  return -1


def parse_query(text: str, label2_rows: list[dict], colours: list[str],
                usages: list[str]) -> queries_lib.Paraphrase:
  """A catalog-worded query ("[brand] [gender] [colour] [usage] type") as
  the constraints the label rule reads, from its label-2 products."""
  types = collections.Counter(r["articleType"] for r in label2_rows)
  article_type = types.most_common(1)[0][0]
  words = text.lower().split()
  type_words = article_type.lower().split()
  if words[-len(type_words):] == type_words:
    words = words[:-len(type_words)]
  used = [False] * len(words)
  fields = {}
  for i, w in enumerate(words):
    if w in GENDER_WORDS and "gender" not in fields:
      fields["gender"], used[i] = GENDER_WORDS[w], True
  for name, values, column in (("colour", colours, "baseColour"),
                               ("usage", usages, "usage")):
    for v in values:  # Longest first: "navy blue" before "blue".
      i = _find(words, v)
      n = len(v.split())
      if (i >= 0 and not any(used[i:i + n]) and
          all(r[column] == v for r in label2_rows)):
        fields[name] = v
        used[i:i + n] = [True] * n
        break
  rest = [w for w, u in zip(words, used) if not u]
  return queries_lib.Paraphrase(text, article_type, brand=" ".join(rest) or
                                None, **fields)


def relation(p: queries_lib.Paraphrase, row: dict,
             sibling_of: dict[str, str]) -> str:
  """"same", "sibling" or "other" type, and the constraints missed."""
  if row["articleType"] == p.article_type:
    kind = "same type"
  elif row["subCategory"] == sibling_of.get(p.article_type):
    kind = "sibling type"
  else:
    kind = "other type"
  missed = []
  for name in ("gender", "colour", "usage", "brand"):  # One at a time.
    alone = queries_lib.Paraphrase(p.text, p.article_type,
                                   **{name: getattr(p, name)})
    if labels_lib.unmet_constraints(alone, row):
      missed.append(name)
  return f"{kind}, misses {'+'.join(missed) or 'nothing'}"


def confusion_lines(true: np.ndarray, said: np.ndarray) -> list[str]:
  out = ["| true \\ teacher | 0 | 1 | 2 |", "|---|---:|---:|---:|"]
  for t in range(3):
    out.append(f"| {t} | " + " | ".join(
        str(int(np.sum((true == t) & (said == s)))) for s in range(3)) + " |")
  for k in range(3):
    said_k, true_k = said == k, true == k
    out.append(f"label {k}: precision {np.mean(true[said_k] == k):.3f}, "
               f"recall {np.mean(said[true_k] == k):.3f} "
               f"({int(said_k.sum())} said, {int(true_k.sum())} true)")
  out.append(f"accuracy {np.mean(true == said):.4f} over {len(true)} rows")
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True, help="a fashion curation")
  ap.add_argument("--data", default="../shared/data/fashion")
  ap.add_argument("--set", default="expanded")
  ap.add_argument("--aisle_field", default="",
                  help="also audit label_shards.aisle_consistent on it")
  ap.add_argument("--write_true_set", default="",
                  help="write the set, teacher rows relabelled, here")
  args = ap.parse_args()
  with open(os.path.join(args.data, "styles.csv")) as f:
    styles = {r["id"]: r for r in csv.DictReader(f)}
  sibling_of = labels_lib.subcategory_of(list(styles.values()))
  colours = sorted({r["baseColour"] for r in styles.values() if
                    r["baseColour"]}, key=lambda c: -len(c.split()))
  usages = sorted({r["usage"] for r in styles.values() if r["usage"]},
                  key=lambda u: -len(u.split()))
  table = collections.defaultdict(list)
  text = {}
  with open(os.path.join(args.data, "relevance_train.csv")) as f:
    for r in csv.DictReader(f):
      table[r["query_id"]].append((r["product_id"], int(r["label"])))
      text[r["query_id"]] = r["query"]
  parsed = {q: parse_query(text[q], [styles[p] for p, l in pairs if l == 2],
                           colours, usages) for q, pairs in table.items()}
  agree = total = 0
  for q, pairs in table.items():
    for p, l in pairs:
      agree += labels_lib.label(parsed[q], styles[p], sibling_of) == l
      total += 1
  print(f"the rule on parsed queries reproduces {agree / total:.4f} of the "
        f"table's {total} labels (misses: sub-brands such as \"adidas "
        "originals\", which the rule cannot tell apart)")

  every_row = pq.read_table(os.path.join(args.workdir, args.set,
                                         "rows.parquet"))
  is_teacher = np.asarray(every_row["label_source"].to_pylist()) == "teacher"
  rows = every_row.filter(is_teacher)
  queries, products = rows["query_id"].to_pylist(), rows["product_id"].to_pylist()
  true = np.array([labels_lib.label(parsed[q], styles[p], sibling_of)
                   for q, p in zip(queries, products)])
  said = rows["label"].to_numpy()
  print(f"\nteacher rows of {args.workdir}/{args.set} "
        f"({len(set(queries))} queries):")
  print("\n".join(confusion_lines(true, said)))
  for t, s in ((0, 1), (1, 2), (0, 2)):
    wrong = np.flatnonzero((true == t) & (said == s))
    kinds = collections.Counter(relation(parsed[queries[i]],
                                         styles[products[i]], sibling_of)
                                for i in wrong)
    print(f"\ntrue {t} said {s} ({len(wrong)}): " + "; ".join(
        f"{k}: {n}" for k, n in kinds.most_common(4)))
  if args.write_true_set:
    labels = every_row["label"].to_numpy().copy()
    labels[is_teacher] = true
    label_shards.write_expanded(
        every_row.set_column(every_row.schema.get_field_index("label"),
                             "label", pa.array(labels, pa.int8())),
        args.write_true_set, {"from": os.path.join(args.workdir, args.set),
                              "teacher_rows": "the catalog's rule"})
    print(f"\nwrote {args.write_true_set}: teacher rows relabelled by the rule")
  if args.aisle_field:
    aisle_of = {i: r[args.aisle_field] for i, r in styles.items()}
    fixed, n = label_shards.aisle_consistent(rows, aisle_of)
    print(f"\nafter the aisle policy on {args.aisle_field} ({n} rows "
          "relabelled 0):")
    print("\n".join(confusion_lines(true, fixed["label"].to_numpy())))


if __name__ == "__main__":
  main()
