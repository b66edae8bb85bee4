"""Rule-written paraphrases over TRAIN products for stage 2's model
selection: labelled by the catalog's rule, complete over the sample."""

import os

import numpy as np
import pytest

from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import catalog_tables
from dashclip_jax.evaluation import paraphrase_labels as labels_lib
from dashclip_jax.evaluation import paraphrase_queries as queries_lib
from dashclip_jax.evaluation import paraphrases

FASHION = os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                       "data", "fashion")
needs_fashion = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION, "styles.csv")),
    reason="fashion catalog not present")


@pytest.fixture(scope="module")
def train():
  return catalog_tables.load_catalog(
      os.path.join(FASHION, "styles.csv"),
      catalog_lib.FASHION_COLUMNS).subset("train")


@needs_fashion
def test_rule_paraphrases_each_have_enough_label2_train_products(train):
  queries = paraphrases.rule_paraphrases(train, max_queries=120, seed=0)
  assert len(queries) == 120
  assert queries == paraphrases.rule_paraphrases(train, 120, seed=0)
  texts = [q.text for q in queries]
  assert len(set(texts)) == len(texts)
  assert not set(texts) & {p.text for p in queries_lib.PARAPHRASES}
  rows = labels_lib.product_rows(train)
  labels = labels_lib.label_matrix(queries, rows,
                                   labels_lib.subcategory_of(rows))
  assert ((labels == 2).sum(1) >= 3).all()
  for q in queries:  # Its words are the table's for its constraints.
    assert any(w in q.text for w in paraphrases.TYPE_WORDS[q.article_type])
    if q.gender:
      assert any(w in q.text for w in paraphrases.GENDER_AFTER[q.gender] +
                 paraphrases.GENDER_BEFORE[q.gender])


@needs_fashion
def test_paraphrase_relevance_is_every_query_by_every_sampled_product(train):
  queries = paraphrases.rule_paraphrases(train, max_queries=20, seed=1)
  rel = paraphrases.paraphrase_relevance(train, queries, max_products=300)
  products = np.unique(rel.product)
  assert len(rel) == len(queries) * len(products)
  rows = labels_lib.product_rows(train)
  sib = labels_lib.subcategory_of(rows)
  for m in range(0, len(rel), 97):  # Spot checks against the rule.
    q, p = rel.query[m], rel.product[m]
    assert rel.label[m] == labels_lib.label(queries[q], rows[p], sib)
  assert all(((rel.label[rel.query == q] == 2).any())
             for q in range(len(queries)))


@needs_fashion
def test_paraphrase_stage2_eval_is_what_stage2_scores(train):
  import types  # pylint: disable=g-import-not-at-top
  from dashclip_jax.runtime import config_files  # pylint: disable=g-import-not-at-top
  from dashclip_jax.trainers import eval_inputs  # pylint: disable=g-import-not-at-top
  from dashclip_jax.trainers import inputs  # pylint: disable=g-import-not-at-top
  cfg = config_files.load_config("configs/stage2.py", "fashion", {
      "data.path": FASHION}).data
  model_config = types.SimpleNamespace(
      vision=types.SimpleNamespace(image_size=32))
  data = eval_inputs.paraphrase_stage2_eval(
      cfg, model_config, global_batch=32, max_products=200,
      max_rule_queries=20)
  assert isinstance(data, eval_inputs.Stage2Eval)
  want = len(queries_lib.PARAPHRASES) + 20
  assert len(data.query_ids) == want and data.labels.has_relevant().all()
  stage2_train = inputs.load_sources(cfg).train_catalog
  titles = [stage2_train.titles[r] for r in data.product_rows]
  assert len(titles) == len(data.product_rows) >= 200
  index = np.concatenate([b["query_index"] for b in data.query_batches])
  np.testing.assert_array_equal(np.sort(index[index >= 0]), np.arange(want))


def test_paraphrase_table_file_reads_and_names_a_bad_row(tmp_path):
  header = "text\tarticle_type\tgender\tcolour\tusage\tbrand"
  good = tmp_path / "good.tsv"
  good.write_text(f"# a comment\n{header}\n# Tops.\n"
                  "navy shirt for him\tShirts\tMen\tNavy Blue\t\t\n"
                  "hoodie\tSweatshirts\n")  # Trailing tabs stripped.
  assert queries_lib.read_paraphrases(good) == (
      queries_lib.Paraphrase("navy shirt for him", "Shirts", gender="Men",
                             colour="Navy Blue"),
      queries_lib.Paraphrase("hoodie", "Sweatshirts"))
  for name, row in (("no_type", "navy shirt"),
                    ("seven", "navy shirt\tShirts\t\t\t\t\tNike\tx")):
    bad = tmp_path / f"{name}.tsv"
    bad.write_text(f"# a comment\n{header}\n{row}\n")
    with pytest.raises(ValueError,
                       match=rf"{name}.tsv: line 3 .*at most 6 tab-separated"):
      queries_lib.read_paraphrases(bad)
  renamed = tmp_path / "renamed.tsv"
  renamed.write_text(header.replace("colour", "color") + "\n")
  with pytest.raises(ValueError, match="renamed.tsv: header"):
    queries_lib.read_paraphrases(renamed)
