r"""Paraphrased shopping queries judged over TRAIN products of the fashion set.

  python -m dashclip_jax.evaluation.paraphrases --model=DIR \
      [--catalog_dir=../shared/data/fashion] [--max_products=2000] \
      [--systems=dashclip,minilm,bm25]

The queries are `paraphrase_queries.PARAPHRASES`, labelled by the catalog's
own rule (`paraphrase_labels.py`); each system ranks the sampled products
for every query, with the graded metrics of `metrics.py`.

Only TRAIN products are judged and ranked, so the test split stays unseen.
Generic paraphrases ("sneakers", "tee for guys") have hundreds of label-2 and
thousands of label-1 TRAIN products, more than a 2,000-product sample holds;
so each query keeps a few of its judged products and the rest is a seeded
uniform draw (`sample_products`). Every sampled product is labelled by the
rule for every query, so the (Q, N) labels are complete for the sample.

Stage 2's model selection (issue 30): `rule_paraphrases` widens the
hand-written list with queries written by hand rules -- rewording tables
(type words, gender and colour phrases, a few sentence patterns) over the
(type, gender, colour) combinations the TRAIN catalog has -- never by the
query generator, so the set does not grade the generator's own wording;
`paraphrase_relevance` is the judged pairs over TRAIN catalog rows, which
`trainers.eval_inputs.paraphrase_stage2_eval` turns into the eval set that
stage 2's periodic evaluation (`stage2.evaluate`) scores like its held-out
queries.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import sys
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
import numpy as np

from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import catalog_tables
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.evaluation import baselines as baselines_lib
from dashclip_jax.evaluation import encoders
from dashclip_jax.evaluation import metrics as metrics_lib
from dashclip_jax.evaluation import paraphrase_labels as labels_lib
from dashclip_jax.evaluation import paraphrase_queries as queries_lib
from dashclip_jax import inference
from dashclip_jax.model import model_dir as model_dir_lib

SYSTEMS = ("dashclip", "minilm", "bm25")
TABLE_KEYS = ("ndcg@10", "recall@1", "recall@10", "mrr")
# Products of each query always kept in the sample; the rest is a uniform
# draw, so generic queries ("sneakers", hundreds of label-2 products) do not
# crowd out the others.
KEEP_LABEL2 = 10
KEEP_LABEL1 = 5


# -- the evaluation set -------------------------------------------------------


@dataclasses.dataclass
class ParaphraseEval:
  """Sampled TRAIN products and their graded labels for every paraphrase.

  Attributes:
    products: the sampled TRAIN products (a `Catalog`, catalog order).
    labels: int8 (Q, N) labels by `paraphrase_labels.label`, for every
      (query, product) pair.
    queries: the Q paraphrases (row order of `labels`).
  """
  products: catalog_lib.Catalog
  labels: np.ndarray
  queries: tuple[queries_lib.Paraphrase, ...]

  @property
  def query_ids(self) -> list[str]:
    return query_ids(len(self.queries))

  @property
  def texts(self) -> list[str]:
    return [q.text for q in self.queries]


def query_ids(n: int) -> list[str]:
  """Ids of the first n paraphrases: "pp000", "pp001", ..."""
  return [f"pp{i:03d}" for i in range(n)]


def sample_products(labels: np.ndarray, max_products: int,
                    seed: int = 0) -> np.ndarray:
  """Sorted product columns to keep: per query some judged ones, then a draw.

  Every query keeps up to `KEEP_LABEL2` of its label-2 and `KEEP_LABEL1` of
  its label-1 products (seeded choice); the rest, up to `max_products` in
  all, is a seeded uniform draw from the others. Labels are computed for all
  kept products, so any relevant product the draw brings is judged too.
  """
  rng = np.random.default_rng(seed)
  keep = set()
  for row in labels:
    for lab, n in ((2, KEEP_LABEL2), (1, KEEP_LABEL1)):
      idx = np.flatnonzero(row == lab)
      keep.update(rng.choice(idx, min(n, idx.size), replace=False).tolist())
  rest = np.setdiff1d(np.arange(labels.shape[1]), sorted(keep))
  n_fill = min(max(max_products - len(keep), 0), rest.size)
  keep.update(rng.choice(rest, n_fill, replace=False).tolist())
  return np.array(sorted(keep), np.int64)


def load_paraphrase_eval(
    catalog_dir: str, max_products: int = 2000, seed: int = 0,
    queries: Sequence[queries_lib.Paraphrase] = queries_lib.PARAPHRASES,
) -> ParaphraseEval:
  """Loads the catalog, samples TRAIN products and labels every paraphrase.

  Args:
    catalog_dir: folder with styles.csv and images/ (the fashion layout).
    max_products: products to rank (more only if the judged ones per query
      need it).
    seed: of the sample; the same seed gives the same products.
    queries: the paraphrases (default `paraphrase_queries.PARAPHRASES`).

  Returns:
    The products, the (Q, N) labels and the queries.
  """
  table = os.path.join(catalog_dir, "styles.csv")
  if not os.path.isfile(table):
    raise FileNotFoundError(f"catalog not found: {table}")
  train = catalog_tables.load_catalog(
      table, catalog_lib.FASHION_COLUMNS).subset("train")
  if not len(train):
    raise ValueError(f"{table}: no TRAIN products")
  rows = labels_lib.product_rows(train)
  queries = tuple(queries)
  labels_lib.check_paraphrases(queries, rows)
  labels = labels_lib.label_matrix(queries, rows,
                                   labels_lib.subcategory_of(rows))
  # Every query needs a label-2 product, or Recall/MRR are undefined.
  metrics_lib.check_labels(labels, query_ids(len(queries)))
  keep = sample_products(labels, max_products, seed)
  products = train.take(keep, name=f"{train.name}[{len(keep)} sampled]")
  return ParaphraseEval(products, labels[:, keep], queries)


# -- rule-written paraphrases for stage 2's model selection -----------------

# The hand-written word tables (`paraphrase_rules.json` beside this file):
# how users name a type (styles.csv articleType -> user words; only types
# whose words stay unambiguous), a gender before and after the type, a
# colour, and the sentence patterns by which constraints a query has.
_RULES = json.loads(pathlib.Path(__file__).with_name(
    "paraphrase_rules.json").read_text())


def _words(table: str) -> dict[str, tuple[str, ...]]:
  return {k: tuple(v) for k, v in _RULES[table].items()}


TYPE_WORDS = _words("type_words")
GENDER_BEFORE = _words("gender_before")
GENDER_AFTER = _words("gender_after")
COLOUR_WORDS = _words("colour_words")
# (has a gender, has a colour) -> its patterns.
PATTERNS: dict[tuple[bool, bool], tuple[str, ...]] = {
    (True, True): tuple(_RULES["patterns"]["gender+colour"]),
    (True, False): tuple(_RULES["patterns"]["gender"]),
    (False, True): tuple(_RULES["patterns"]["colour"]),
}


def rule_paraphrases(catalog: catalog_lib.Catalog, max_queries: int = 300,
                     min_products: int = 3, seed: int = 0
                     ) -> tuple[queries_lib.Paraphrase, ...]:
  """Paraphrases written by the hand rules above for the (type, gender,
  colour) combinations with at least `min_products` label-2 products in
  `catalog` (its TRAIN products: the fashion columns), a seeded sample of
  at most `max_queries`; each carries its constraints, so it is labelled
  by `paraphrase_labels`. Texts of the hand-written list are left out.

  Every combination is one of: type + gender + colour, type + gender,
  type + colour (a type alone is the hand list's job).
  """
  rows = labels_lib.product_rows(catalog)
  counts = collections.Counter()
  for r in rows:  # Per product: its label-2 combinations.
    if r["articleType"] not in TYPE_WORDS:
      continue
    genders = {r["gender"]} | ({"Men", "Women"} if r["gender"] == "Unisex"
                               else set())
    for g in genders & set(GENDER_AFTER):
      counts[(r["articleType"], g, None)] += 1
      if r["baseColour"] in COLOUR_WORDS:
        counts[(r["articleType"], g, r["baseColour"])] += 1
    if r["baseColour"] in COLOUR_WORDS:
      counts[(r["articleType"], None, r["baseColour"])] += 1
  combos = sorted((k for k, n in counts.items() if n >= min_products),
                  key=lambda k: (k[0], k[1] or "", k[2] or ""))
  rng = np.random.default_rng([seed, 30])
  order = rng.permutation(len(combos))
  hand = {p.text for p in queries_lib.PARAPHRASES}
  out, texts = [], set()
  for j in order.tolist():
    if len(out) >= max_queries:
      break
    t, g, c = combos[j]
    pick = lambda words: words[rng.integers(len(words))]
    pattern = pick(PATTERNS[(g is not None, c is not None)])
    text = pattern.format(
        type=pick(TYPE_WORDS[t]), colour=pick(COLOUR_WORDS[c]) if c else "",
        before=pick(GENDER_BEFORE[g]) if g else "",
        after=pick(GENDER_AFTER[g]) if g else "")
    if text in hand or text in texts:
      continue
    texts.add(text)
    out.append(queries_lib.Paraphrase(text, t, gender=g, colour=c))
  return tuple(out)


def paraphrase_relevance(catalog: catalog_lib.Catalog,
                         queries: Sequence[queries_lib.Paraphrase],
                         max_products: int = 2000, seed: int = 0
                         ) -> relevance_lib.Relevance:
  """The paraphrases' judged pairs over `catalog`'s rows (TRAIN products):
  every query labelled (0, 1, 2) for every product of a seeded sample
  (`sample_products`), so each ranks the same products; query ids
  "pr000", ... ("pp" is the CLI's)."""
  rows = labels_lib.product_rows(catalog)
  queries = tuple(queries)
  labels_lib.check_paraphrases(queries, rows)
  labels = labels_lib.label_matrix(queries, rows,
                                   labels_lib.subcategory_of(rows))
  keep = sample_products(labels, max_products, seed)
  q, p = np.meshgrid(np.arange(len(queries)), keep, indexing="ij")
  return relevance_lib.Relevance(
      name=f"{len(queries)} paraphrases over {len(keep)} of {catalog.name}",
      query_ids=[f"pr{i:03d}" for i in range(len(queries))],
      queries=[x.text for x in queries], query=q.ravel().astype(np.int32),
      product=p.ravel().astype(np.int32),
      label=labels[:, keep].ravel().astype(np.int8),
      num_products=len(catalog))


# -- systems ------------------------------------------------------------------


def _scores(system: str, data: ParaphraseEval, model_dir: str,
            batch_size: int, model: Any = None) -> np.ndarray:
  """float (Q, N) query-product scores of one system."""
  titles = list(data.products.titles)
  if system == "bm25":
    return baselines_lib.bm25_scores(data.texts, titles)
  if system == "minilm":
    return baselines_lib.minilm_scores(data.texts, titles, model)
  if model is None:
    model = inference.load(model_dir, batch_size=batch_size)
  q = np.asarray(model.encode_query(data.texts), np.float32)
  p = encoders.encode_products(model, data.products)
  return q @ p.T


def check_systems(systems: Sequence[str], model_dir: str | None,
                  need_model: bool = True) -> None:
  """Fails fast (before any encoding) on unknown systems or no model dir."""
  unknown = [s for s in systems if s not in SYSTEMS]
  if unknown or not systems:
    raise ValueError(f"systems: unknown {unknown or 'none given'}; known "
                     f"{list(SYSTEMS)}")
  if "dashclip" in systems and need_model:
    if not model_dir:
      raise ValueError("dashclip needs a model dir (--model)")
    model_dir_lib.resolve_model_dir(model_dir)  # FileNotFoundError if none.


def evaluate(model_dir: str | None, catalog_dir: str, *,
             systems: Sequence[str] = SYSTEMS, max_products: int = 2000,
             seed: int = 0, batch_size: int = 32,
             models: Mapping[str, Any] | None = None,
             data: ParaphraseEval | None = None) -> dict[str, dict[str, float]]:
  """Ranks the sampled TRAIN products for every paraphrase, per system.

  Args:
    model_dir: trained model dir or workdir (`dashclip_jax.load`); only
      needed for "dashclip".
    catalog_dir: the fashion folder.
    systems: any of "dashclip", "minilm" (query vs title) and "bm25".
    max_products, seed: of the product sample (`load_paraphrase_eval`).
    batch_size: dashclip encoding batch.
    models: optional preloaded encoders, e.g. {"dashclip": encoder,
      "minilm": baselines.MiniLM()}.
    data: optional preloaded evaluation set (then catalog_dir is unused).

  Returns:
    {system: {"ndcg@10", "recall@1|5|10|50", "mrr"}}; equal scores rank by
    catalog order (`metrics.rank_by_score`).
  """
  models = dict(models or {})
  check_systems(systems, model_dir, need_model="dashclip" not in models)
  if data is None:
    data = load_paraphrase_eval(catalog_dir, max_products, seed)
  out = {}
  for system in systems:
    scores = _scores(system, data, model_dir, batch_size, models.get(system))
    ranking = metrics_lib.rank_by_score(scores)
    out[system] = metrics_lib.retrieval_metrics(ranking, data.labels,
                                                data.query_ids)
  return out


def format_table(results: Mapping[str, Mapping[str, float]],
                 data: ParaphraseEval) -> str:
  """The CLI's summary: sizes, then one row per system."""
  lines = [f"{len(data.queries)} paraphrased queries x {len(data.products)} "
           "TRAIN products",
           f"{'system':<10}" + "".join(f"{k:>11}" for k in TABLE_KEYS)]
  for name, m in results.items():
    lines.append(f"{name:<10}" + "".join(f"{m[k]:>11.4f}" for k in TABLE_KEYS))
  return "\n".join(lines)


# -- command line ------------------------------------------------------------
# Flags are defined only when this module is the program, so that importing
# it leaves the importer's flags alone.


def main(argv) -> None:
  if len(argv) > 1:
    sys.exit(f"paraphrases: error: unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  systems = [s.strip() for s in f.systems.split(",") if s.strip()]
  try:
    check_systems(systems, f.model)
    data = load_paraphrase_eval(f.catalog_dir, f.max_products, f.seed)
    results = evaluate(f.model, f.catalog_dir, systems=systems,
                       batch_size=f.batch_size, data=data)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"paraphrases: error: {e}")
  print(format_table(results, data))


if __name__ == "__main__":
  flags.DEFINE_string("model", "", "Trained model dir or training workdir "
                      "(needed for the dashclip system).")
  flags.DEFINE_string("catalog_dir", os.path.join("..", "shared", "data",
                                                  "fashion"),
                      "Fashion catalog folder (styles.csv, images/).")
  flags.DEFINE_integer("max_products", 2000, "TRAIN products to rank.")
  flags.DEFINE_integer("seed", 0, "Seed of the product sample.")
  flags.DEFINE_string("systems", ",".join(SYSTEMS),
                      "Comma-separated: dashclip, minilm, bm25.")
  flags.DEFINE_integer("batch_size", 32, "dashclip encoding batch.")
  app.run(main)
