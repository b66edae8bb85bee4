r"""Paraphrased shopping queries judged over TRAIN products of the fashion set.

  python -m dashclip_jax.evaluation.paraphrases --model=DIR \
      [--catalog_dir=../shared/data/fashion] [--max_products=2000] \
      [--systems=dashclip,minilm,bm25]

The catalog's own queries use its words ("men navy blue shirts"); real users
paraphrase ("navy shirt for him", "ladies purse"). `PARAPHRASES` is a
hand-written set of such queries, each stored as the structured constraints it
means, so it is labelled with the same rule as the catalog's queries
(../shared/data/fashion/README.md):

  a query names a product type (articleType) and optionally gender, colour,
  usage and brand. Label 2: of that type and meeting every other constraint
  (a Men/Women query also accepts Unisex). Label 1: of that type with exactly
  one other constraint unmet, or of a sibling type (same subCategory) meeting
  all others. Label 0: anything else.

Brand: the title's first words are the brand words (case-insensitive,
apostrophes dropped, so "levis" matches "Levi's"). The catalog's own labeler
treats sub-brands ("ADIDAS Originals", "Arrow Sport") as other brands; this
rule does not, and no paraphrase names such a brand.

Only TRAIN products are judged and ranked, so the test split stays unseen.
Generic paraphrases ("sneakers", "tee for guys") have hundreds of label-2 and
thousands of label-1 TRAIN products, more than a 2,000-product sample holds;
so each query keeps a few of its judged products and the rest is a seeded
uniform draw (`sample_products`). Every sampled product is labelled by the
rule for every query, so the (Q, N) labels are complete for the sample.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.evaluation import baselines as baselines_lib
from dashclip_jax.evaluation import metrics as metrics_lib

SYSTEMS = ("dashclip", "minilm", "bm25")
TABLE_KEYS = ("ndcg@10", "recall@1", "recall@10", "mrr")
# Products of each query always kept in the sample; the rest is a uniform
# draw, so generic queries ("sneakers", hundreds of label-2 products) do not
# crowd out the others.
KEEP_LABEL2 = 10
KEEP_LABEL1 = 5
# A Men/Women query also accepts products for both.
_ALSO_ACCEPTS = {"Men": "Unisex", "Women": "Unisex"}


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


_P = Paraphrase  # Short, for the table below.
PARAPHRASES: tuple[Paraphrase, ...] = (
    # Tops.
    _P("navy shirt for him", "Shirts", gender="Men", colour="Navy Blue"),
    _P("dress shirt for office", "Shirts", usage="Formal"),
    _P("white formal shirt for men", "Shirts", gender="Men", colour="White",
       usage="Formal"),
    _P("check shirt for ladies", "Shirts", gender="Women"),
    _P("tee for guys", "Tshirts", gender="Men"),
    _P("plain white tee", "Tshirts", colour="White"),
    _P("gym t shirt", "Tshirts", usage="Sports"),
    _P("graphic tee for boys", "Tshirts", gender="Boys"),
    _P("tshirt men blue", "Tshirts", gender="Men", colour="Blue"),
    _P("black top for her", "Tops", gender="Women", colour="Black"),
    _P("ladies blouse", "Tops", gender="Women"),
    _P("hoodie", "Sweatshirts"),
    _P("grey hoodie for men", "Sweatshirts", gender="Men", colour="Grey"),
    _P("woollen pullover", "Sweaters"),
    _P("jumper for women", "Sweaters", gender="Women"),
    _P("winter jacket for men", "Jackets", gender="Men"),
    _P("black jacket", "Jackets", colour="Black"),
    _P("kurta for men", "Kurtas", gender="Men"),
    _P("ethnic kurta for women", "Kurtas", gender="Women", usage="Ethnic"),
    _P("ladies kurti", "Kurtis", gender="Women"),
    _P("one piece dress", "Dresses"),
    _P("frock for women", "Dresses", gender="Women"),
    _P("sari", "Sarees"),
    # Bottoms.
    _P("pants for men", "Trousers", gender="Men"),
    _P("black pants", "Trousers", colour="Black"),
    _P("formal trousers", "Trousers", usage="Formal"),
    _P("denims for men", "Jeans", gender="Men"),
    _P("blue denim for her", "Jeans", gender="Women", colour="Blue"),
    _P("jeans men black", "Jeans", gender="Men", colour="Black"),
    _P("half pants for men", "Shorts", gender="Men"),
    _P("joggers for men", "Track Pants", gender="Men"),
    _P("sweatpants", "Track Pants"),
    _P("yoga leggings for women", "Leggings", gender="Women"),
    _P("ladies skirt", "Skirts", gender="Women"),
    # Innerwear.
    _P("underwear for men", "Briefs", gender="Men"),
    _P("vest for men", "Innerwear Vests", gender="Men"),
    _P("bra for women", "Bra", gender="Women"),
    # Footwear.
    _P("running shoes", "Sports Shoes"),
    _P("gym shoes for women", "Sports Shoes", gender="Women"),
    _P("sneakers", "Casual Shoes"),
    _P("white sneakers for men", "Casual Shoes", gender="Men", colour="White"),
    _P("office shoes for men", "Formal Shoes", gender="Men"),
    _P("black leather shoes for office", "Formal Shoes", colour="Black"),
    _P("stilettos", "Heels"),
    _P("black high heels", "Heels", colour="Black"),
    _P("ballerina flats", "Flats"),
    _P("ladies sandals", "Sandals", gender="Women"),
    _P("slippers for men", "Flip Flops", gender="Men"),
    _P("flip flops for the beach", "Flip Flops"),
    _P("socks for men", "Socks", gender="Men"),
    # Accessories.
    _P("ladies purse", "Handbags", gender="Women"),
    _P("black handbag women", "Handbags", gender="Women", colour="Black"),
    _P("evening clutch", "Clutches"),
    _P("school bag", "Backpacks"),
    _P("gym bag", "Duffel Bag"),
    _P("wrist watch for women", "Watches", gender="Women"),
    _P("gold watch for him", "Watches", gender="Men", colour="Gold"),
    _P("silver watch for men", "Watches", gender="Men", colour="Silver"),
    _P("shades", "Sunglasses"),
    _P("black shades for men", "Sunglasses", gender="Men", colour="Black"),
    _P("brown leather wallet for him", "Wallets", gender="Men",
       colour="Brown"),
    _P("belt for men", "Belts", gender="Men"),
    _P("baseball cap", "Caps"),
    _P("neck tie", "Ties"),
    _P("cuff links", "Cufflinks"),
    _P("scarf for women", "Scarves", gender="Women"),
    _P("ladies earrings", "Earrings", gender="Women"),
    # Personal care.
    _P("perfume for men", "Perfume and Body Mist", gender="Men"),
    _P("body spray for men", "Deodorant", gender="Men"),
    _P("nail paint", "Nail Polish"),
    _P("lip colour", "Lipstick"),
    # With a brand.
    _P("nike running shoes", "Sports Shoes", brand="Nike"),
    _P("puma sneakers", "Casual Shoes", brand="Puma"),
    _P("wrangler denims", "Jeans", brand="Wrangler"),
    _P("baggit purse", "Handbags", brand="Baggit"),
    _P("catwalk black heels", "Heels", colour="Black", brand="Catwalk"),
    _P("fastrack watch for men", "Watches", gender="Men", brand="Fastrack"),
    _P("lino perros wallet", "Wallets", brand="Lino Perros"),
    _P("reebok running shoes for men", "Sports Shoes", gender="Men",
       brand="Reebok"),
)
del _P


@dataclasses.dataclass
class ParaphraseEval:
  """Sampled TRAIN products and their graded labels for every paraphrase.

  Attributes:
    products: the sampled TRAIN products (a `Catalog`, catalog order).
    labels: int8 (Q, N) labels by `label`, for every (query, product) pair.
    queries: the Q paraphrases (row order of `labels`).
  """
  products: catalog_lib.Catalog
  labels: np.ndarray
  queries: tuple[Paraphrase, ...]

  @property
  def query_ids(self) -> list[str]:
    return query_ids(len(self.queries))

  @property
  def texts(self) -> list[str]:
    return [q.text for q in self.queries]


def query_ids(n: int) -> list[str]:
  """Ids of the first n paraphrases: "pp000", "pp001", ..."""
  return [f"pp{i:03d}" for i in range(n)]


# -- the label rule -----------------------------------------------------------


def _words(text: str) -> list[str]:
  return text.lower().replace("'", "").split()


def brand_matches(brand: str, title: str) -> bool:
  """Whether `title` starts with the words of `brand` (case-insensitive)."""
  want = _words(brand)
  return bool(want) and _words(title)[:len(want)] == want


def unmet_constraints(p: Paraphrase, product_row: Mapping[str, str]) -> int:
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


def label(p: Paraphrase, product_row: Mapping[str, str],
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


def label_matrix(queries: Sequence[Paraphrase],
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


# -- the evaluation set -------------------------------------------------------


def check_paraphrases(queries: Sequence[Paraphrase],
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
    queries: Sequence[Paraphrase] = PARAPHRASES) -> ParaphraseEval:
  """Loads the catalog, samples TRAIN products and labels every paraphrase.

  Args:
    catalog_dir: folder with styles.csv and images/ (the fashion layout).
    max_products: products to rank (more only if the judged ones per query
      need it).
    seed: of the sample; the same seed gives the same products.
    queries: the paraphrases (default `PARAPHRASES`).

  Returns:
    The products, the (Q, N) labels and the queries.
  """
  table = os.path.join(catalog_dir, "styles.csv")
  if not os.path.isfile(table):
    raise FileNotFoundError(f"catalog not found: {table}")
  train = catalog_lib.load_catalog(table, catalog_lib.FASHION_COLUMNS).subset(
      "train")
  if not len(train):
    raise ValueError(f"{table}: no TRAIN products")
  rows = product_rows(train)
  queries = tuple(queries)
  check_paraphrases(queries, rows)
  labels = label_matrix(queries, rows, subcategory_of(rows))
  # Every query needs a label-2 product, or Recall/MRR are undefined.
  metrics_lib.check_labels(labels, query_ids(len(queries)))
  keep = sample_products(labels, max_products, seed)
  products = train.take(keep, name=f"{train.name}[{len(keep)} sampled]")
  return ParaphraseEval(products, labels[:, keep], queries)


# -- systems ------------------------------------------------------------------


def _scores(system: str, data: ParaphraseEval, model_dir: str,
            batch_size: int, model: Any = None) -> np.ndarray:
  """float (Q, N) query-product scores of one system."""
  titles = list(data.products.titles)
  if system == "bm25":
    return baselines_lib.bm25_scores(data.texts, titles)
  if system == "minilm":
    return baselines_lib.minilm_scores(data.texts, titles, model)
  # pylint: disable=g-import-not-at-top
  from dashclip_jax.evaluation import run as run_lib
  if model is None:
    import dashclip_jax
    model = dashclip_jax.load(model_dir, batch_size=batch_size)
  # pylint: enable=g-import-not-at-top
  q = np.asarray(model.encode_query(data.texts), np.float32)
  p = run_lib.encode_products(model, data.products)
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
    from dashclip_jax import inference  # pylint: disable=g-import-not-at-top
    inference.resolve_model_dir(model_dir)  # FileNotFoundError if none.


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
  from absl import flags  # pylint: disable=g-import-not-at-top
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
  # pylint: disable=g-import-not-at-top
  from absl import app
  from absl import flags
  # pylint: enable=g-import-not-at-top
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
