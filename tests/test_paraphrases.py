"""Paraphrased-query evaluation: the label rule, the sample, BM25 end to end."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from dashclip_jax.evaluation import baselines
from dashclip_jax.evaluation import paraphrase_labels as pl
from dashclip_jax.evaluation import paraphrase_queries as pq
from dashclip_jax.evaluation import paraphrases as pp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = os.path.join(REPO, "..", "shared", "data", "fashion")

needs_fashion = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION, "styles.csv")),
    reason="fashion catalog not found at ../shared/data/fashion")


def _row(article_type="Shirts", sub="Topwear", gender="Men", colour="Blue",
         usage="Casual", title="Acme Men Blue Shirt"):
  return {"articleType": article_type, "subCategory": sub, "gender": gender,
          "baseColour": colour, "usage": usage, "productDisplayName": title}


SIBLING_OF = {"Shirts": "Topwear", "Tshirts": "Topwear", "Jeans": "Bottomwear"}
MEN_BLUE_SHIRT = pq.Paraphrase("blue shirt for him", "Shirts", gender="Men",
                               colour="Blue")


# -- the label rule on hand-made rows ----------------------------------------


@pytest.mark.parametrize("row, want", [
    (_row(), 2),                                     # Type + all constraints.
    (_row(gender="Unisex"), 2),                      # Men accepts Unisex.
    (_row(colour="Red"), 1),                         # One constraint unmet.
    (_row(gender="Boys"), 1),                        # Boys is not Men.
    (_row(gender="Women", colour="Red"), 0),         # Two unmet.
    (_row(article_type="Tshirts"), 1),               # Sibling, all met.
    (_row(article_type="Tshirts", colour="Red"), 0),  # Sibling, one unmet.
    (_row(article_type="Jeans", sub="Bottomwear"), 0),  # Other subCategory.
])
def test_label_rule(row, want):
  assert pl.label(MEN_BLUE_SHIRT, row, SIBLING_OF) == want


def test_label_unisex_only_for_men_and_women():
  boys = pq.Paraphrase("shirt for boys", "Shirts", gender="Boys")
  assert pl.label(boys, _row(gender="Boys"), SIBLING_OF) == 2
  assert pl.label(boys, _row(gender="Unisex"), SIBLING_OF) == 1


def test_label_sibling_uses_the_query_types_subcategory():
  # A Tshirt filed under another subCategory is no sibling of Shirts.
  row = _row(article_type="Tshirts", sub="Loungewear and Nightwear")
  assert pl.label(MEN_BLUE_SHIRT, row, SIBLING_OF) == 0
  # A type missing from the map has no siblings.
  other = pq.Paraphrase("sari", "Sarees")
  assert pl.label(other, _row(), SIBLING_OF) == 0


def test_label_usage_and_brand():
  p = pq.Paraphrase("lino perros formal shirt", "Shirts", usage="Formal",
                    brand="Lino Perros")
  assert pl.label(p, _row(usage="Formal", title="LINO PERROS Men Shirt"),
                  SIBLING_OF) == 2
  assert pl.label(p, _row(usage="Formal", title="Lino Men Shirt"),
                  SIBLING_OF) == 1
  assert pl.label(p, _row(title="Acme Lino Perros Shirt"), SIBLING_OF) == 0
  assert pl.brand_matches("levis", "Levi's Men Blue Jeans")
  assert not pl.brand_matches("nike", "Nikeland Men Shoes")


def test_subcategory_of_takes_the_main_one():
  rows = [_row("Sandals", "Sandal")] * 3 + [_row("Sandals", "Shoes")]
  rows += [_row("Caps", "Headwear"), _row("Caps", "Accessories")]
  assert pl.subcategory_of(rows) == {"Sandals": "Sandal",
                                     "Caps": "Accessories"}


def test_label_matrix_matches_label():
  rows = [_row(), _row(colour="Red"), _row(article_type="Tshirts"),
          _row(article_type="Jeans", sub="Bottomwear")]
  queries = [MEN_BLUE_SHIRT, pq.Paraphrase("jeans", "Jeans")]
  got = pl.label_matrix(queries, rows, SIBLING_OF)
  np.testing.assert_array_equal(got, [[2, 1, 1, 0], [0, 0, 0, 2]])


def test_sample_products_keeps_judged_and_is_seeded():
  labels = np.zeros((2, 50), np.int8)
  labels[0, [3, 40]] = 2
  labels[1, [7]] = 2
  labels[1, [8, 9]] = 1
  keep = pp.sample_products(labels, max_products=10, seed=3)
  assert len(keep) == 10 and np.all(np.diff(keep) > 0)
  assert {3, 40, 7, 8, 9} <= set(keep.tolist())
  np.testing.assert_array_equal(keep, pp.sample_products(labels, 10, seed=3))
  # Never fewer than the judged ones, never more than there are.
  assert len(pp.sample_products(labels, 2)) == 5
  assert len(pp.sample_products(labels, 500)) == 50


def test_paraphrase_list_shape():
  texts = [p.text for p in pq.PARAPHRASES]
  assert 60 <= len(texts) <= 80
  assert len(set(texts)) == len(texts)
  assert sum(p.brand is not None for p in pq.PARAPHRASES) >= 3


# -- on the real catalog -------------------------------------------------------


@pytest.fixture(scope="module")
def train_rows():
  from dashclip_jax.data import catalog  # pylint: disable=g-import-not-at-top
  from dashclip_jax.data import catalog_tables
  cat = catalog_tables.load_catalog(os.path.join(FASHION, "styles.csv"),
                             catalog.FASHION_COLUMNS)
  return pl.product_rows(cat.subset("train"))


@pytest.fixture(scope="module")
def data():
  return pp.load_paraphrase_eval(FASHION)


@needs_fashion
def test_constraint_values_exist_in_styles_csv():
  with open(os.path.join(FASHION, "styles.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  values = {k: {r[k] for r in rows}
            for k in ("articleType", "gender", "baseColour", "usage")}
  for p in pq.PARAPHRASES:
    assert p.article_type in values["articleType"], p
    assert p.gender is None or p.gender in values["gender"], p
    assert p.colour is None or p.colour in values["baseColour"], p
    assert p.usage is None or p.usage in values["usage"], p


@needs_fashion
def test_every_query_has_a_label2_train_product(train_rows):
  pl.check_paraphrases(pq.PARAPHRASES, train_rows)
  labels = pl.label_matrix(pq.PARAPHRASES, train_rows,
                           pl.subcategory_of(train_rows))
  no_rel = [p.text for p, r in zip(pq.PARAPHRASES, labels)
            if not (r == 2).any()]
  assert not no_rel


@needs_fashion
def test_label_reproduces_the_catalogs_own_labels(train_rows):
  """The rule gives relevance_train.csv's labels on its brand-free queries."""
  by_id = {}
  with open(os.path.join(FASHION, "styles.csv"), newline="") as f:
    for r in csv.DictReader(f):
      by_id[r["id"]] = r
  types = sorted({r["articleType"] for r in by_id.values()}, key=len,
                 reverse=True)
  colours = sorted({r["baseColour"] for r in by_id.values()} - {""}, key=len,
                   reverse=True)
  usages = {r["usage"].lower(): r["usage"] for r in by_id.values()}
  genders = {g.lower(): g for g in ("Men", "Women", "Boys", "Girls")}

  def parse(q):  # "[usage] [gender] [colour] <type>"; None if a brand is left.
    t = next(t for t in types if q.endswith(t.lower()))
    rest = q[:-len(t)].strip()
    colour = next((c for c in colours if rest == c.lower() or
                   rest.endswith(" " + c.lower())), None)
    words = (rest[:-len(colour)] if colour else rest).split()
    gender = genders.get(words[-1]) if words else None
    words = words[:-1] if gender else words
    usage = usages.get(words[0]) if len(words) == 1 else None
    if len(words) > (usage is not None):
      return None
    return pq.Paraphrase(q, t, gender=gender, colour=colour, usage=usage)

  sibling_of = pl.subcategory_of(train_rows)
  checked = 0
  with open(os.path.join(FASHION, "relevance_train.csv"), newline="") as f:
    for r in csv.DictReader(f):
      p = parse(r["query"])
      if p is None:
        continue
      assert pl.label(p, by_id[r["product_id"]], sibling_of) == int(
          r["label"]), (r, p)
      checked += 1
  assert checked > 10000


@needs_fashion
def test_sample_is_train_only_and_keeps_judged(data, train_rows):
  assert set(data.products.split) == {"train"}
  assert len(data.products) == 2000
  assert data.labels.shape == (len(pq.PARAPHRASES), 2000)
  # The labels of the sample are the rule's labels of those products.
  rows = pl.product_rows(data.products)
  np.testing.assert_array_equal(
      data.labels,
      pl.label_matrix(pq.PARAPHRASES, rows, pl.subcategory_of(train_rows)))
  full = pl.label_matrix(pq.PARAPHRASES, train_rows,
                         pl.subcategory_of(train_rows))
  for lab, keep in ((2, pp.KEEP_LABEL2), (1, pp.KEEP_LABEL1)):
    want = np.minimum((full == lab).sum(1), keep)
    assert np.all((data.labels == lab).sum(1) >= want), lab


@needs_fashion
def test_sample_is_deterministic(data):
  again = pp.load_paraphrase_eval(FASHION)
  assert again.products.ids == data.products.ids
  np.testing.assert_array_equal(again.labels, data.labels)
  other = pp.load_paraphrase_eval(FASHION, seed=1)
  assert other.products.ids != data.products.ids


@needs_fashion
def test_bm25_end_to_end(data):
  out = pp.evaluate(None, FASHION, systems=["bm25"], data=data)
  m = out["bm25"]
  assert set(m) == {"ndcg@10", "recall@1", "recall@5", "recall@10",
                    "recall@50", "mrr"}
  assert 0.0 < m["ndcg@10"] < 1.0 and 0.0 < m["mrr"] <= 1.0
  # A query in the catalog's words: BM25's top title holds them all.
  q = pq.Paraphrase("catwalk black heels", "Heels", colour="Black",
                    brand="Catwalk")
  i = pq.PARAPHRASES.index(q)
  scores = baselines.bm25_scores(data.texts, data.products.titles)
  top = int(np.argmax(scores[i]))
  assert data.labels[i, top] == 2
  assert set(q.text.split()) <= set(data.products.titles[top].lower().split())
  # A true paraphrase shares no word with any title: BM25 has nothing.
  i = pq.PARAPHRASES.index(pq.Paraphrase("shades", "Sunglasses"))
  assert not scores[i].any()


def test_evaluate_with_a_given_model(tmp_path):
  """The dashclip path with a stand-in encoder on a tiny catalog."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(tmp_path / "images")
  rows = [("1", "Men", "Shirts", "Blue", "Acme Men Blue Shirt"),
          ("2", "Men", "Shirts", "Red", "Acme Men Red Shirt"),
          ("3", "Women", "Heels", "Black", "Bolt Women Black Heels"),
          ("4", "Women", "Heels", "Gold", "Bolt Women Gold Heels")]
  with open(tmp_path / "styles.csv", "w") as f:
    f.write("id,gender,masterCategory,subCategory,articleType,baseColour,"
            "season,year,usage,productDisplayName,split\n")
    for pid, g, t, c, title in rows:
      sub = "Topwear" if t == "Shirts" else "Shoes"
      f.write(f"{pid},{g},Apparel,{sub},{t},{c},Fall,2011,Casual,{title},"
              "train\n")
      Image.fromarray(np.zeros((8, 6, 3), np.uint8)).save(
          tmp_path / "images" / f"{pid}.jpg")
  queries = (pq.Paraphrase("blue shirt for him", "Shirts", gender="Men",
                           colour="Blue"),
             pq.Paraphrase("black heels", "Heels", colour="Black"))
  data = pp.load_paraphrase_eval(str(tmp_path), queries=queries)
  np.testing.assert_array_equal(data.labels, [[2, 1, 0, 0], [0, 0, 2, 1]])

  class WordModel:  # One dimension per word: exact matches win.
    words = ("blue", "red", "black", "gold", "shirt", "heels")

    def _embed(self, texts):
      return np.array([[w in t.lower().split() for w in self.words]
                       for t in texts], np.float32)

    def encode_query(self, texts):
      return self._embed(texts)

    def encode_product(self, images, titles):
      assert len(images) == len(titles) and images[0].shape == (8, 6, 3)
      return self._embed(titles)

  out = pp.evaluate(None, str(tmp_path), systems=["dashclip", "bm25"],
                    models={"dashclip": WordModel()}, data=data)
  assert out["dashclip"]["recall@1"] == 1.0
  assert out["dashclip"]["ndcg@10"] == pytest.approx(1.0)
  table = pp.format_table(out, data)
  assert "2 paraphrased queries x 4 TRAIN products" in table
  assert table.splitlines()[2].startswith("dashclip")


@pytest.mark.parametrize("args, message", [
    (["--model=/nonexistent/model", "--systems=dashclip"],
     "checkpoint directory not found"),
    (["--systems=bm25", "--catalog_dir=/nonexistent/fashion"],
     "catalog not found"),
    (["--systems=bm25,tfidf"], "unknown ['tfidf']"),
    (["--systems=dashclip"], "needs a model dir"),
])
def test_cli_errors_are_one_line(args, message):
  proc = subprocess.run(
      [sys.executable, "-m", "dashclip_jax.evaluation.paraphrases", *args],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0
  err = proc.stderr.strip()
  assert message in err and "Traceback" not in err, err
  assert len(err.splitlines()) == 1, err
