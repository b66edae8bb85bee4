"""Model selection on held-out train queries, never on the test set."""

import ml_collections
import numpy as np

from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax import model as model_lib
from dashclip_jax.trainers import eval_inputs
from dashclip_jax.trainers import inputs
from dashclip_jax.trainers import stage2

import helpers


def _relevance():
  queries = ["red shirt", "Red  Shirt", "blue cap", "men watch", "bag",
             "green shorts", "women skirt", "black shoes"]
  q, p, l = [], [], []
  for i in range(len(queries)):
    for j in range(3):
      q.append(i), p.append((i + j) % 5), l.append(2 - j)
  return relevance_lib.Relevance(
      "toy", [f"q{i}" for i in range(len(queries))], queries,
      np.array(q, np.int32), np.array(p, np.int32), np.array(l, np.int8), 5)


def test_split_queries_is_a_partition_by_query_text():
  rel = _relevance()
  kept, held = rel.split_queries(0.5)
  assert kept.num_queries + held.num_queries == rel.num_queries
  assert len(kept) + len(held) == len(rel)
  assert not set(kept.queries) & set(held.queries)
  # The same text (up to case and spaces) lands on one side.
  held_texts = [" ".join(t.lower().split()) for t in held.queries]
  assert held_texts.count("red shirt") in (0, 2)
  # Pairs keep their product and label, queries renumbered.
  for r in (kept, held):
    for qi, pi, li in zip(r.query, r.product, r.label):
      orig = rel.queries.index(r.queries[qi])
      assert ((rel.query == orig) & (rel.product == pi) &
              (rel.label == li)).any()
  again = rel.split_queries(0.5)[1]
  assert again.queries == held.queries
  assert rel.split_queries(0.0)[1].num_queries == 0


def test_heldout_eval_ranks_judged_products_by_hand():
  # Two queries (embeddings along x and y), three judged products.
  features = np.array([[1.0, 0.1], [0.1, 1.0], [0.7, 0.7]], np.float32)
  # q0: product 0 label 2, product 2 label 1, product 1 unjudged.
  # q1: product 0 label 2 (ranked last), product 1 label 0.
  labels = np.array([[2, -1, 1], [2, 0, -1]], np.int32)
  fns, params, data, mesh = helpers.two_query_heldout_eval(labels)
  out = stage2.evaluate(fns, params, data, mesh,
                        features=(features, np.ones(3, bool)))
  # q0 ranks [0, 2, 1]: DCG = 3 + 1/log2(3); ideal the same -> 1.
  # q1 ranks [1, 0] among judged (2 unjudged last): DCG = 3/log2(3),
  # ideal 3 -> 1/log2(3).
  ndcg = (1.0 + 1.0 / np.log2(3)) / 2
  np.testing.assert_allclose(out["eval/ndcg@10"], ndcg, rtol=1e-6)
  np.testing.assert_allclose(out["eval/recall@1"], 0.5)
  np.testing.assert_allclose(out["eval/mrr"], (1.0 + 0.5) / 2)
  # One name per figure: recall@1 is not also logged as "r@1".
  assert {k for k in out if "@" in k or k == "eval/mrr"} == {
      "eval/ndcg@10", "eval/recall@1", "eval/mrr"}


def _synthetic_data(**overrides) -> ml_collections.ConfigDict:
  """A small synthetic config.data (96 products, 40 train queries)."""
  return ml_collections.ConfigDict(dict(
      source="synthetic", synthetic=dict(num_products=96,
                                         num_train_queries=40,
                                         num_test_queries=8, image_size=32,
                                         seed=0),
      max_bad_fraction=0.01, test_fraction=0.1, text_max_length=16,
      query_max_length=12, image_size=0, **overrides))


def test_stage2_eval_holds_queries_out_of_training():
  cfg = _synthetic_data(heldout_query_fraction=0.25)
  kept, held = inputs.train_relevance(cfg)
  assert held.num_queries > 0 and kept.num_queries > 0
  assert not set(kept.queries) & set(held.queries)
  data = eval_inputs.stage2_eval(cfg, model_lib.model_config("tiny"), 8)
  assert set(data.query_ids) <= set(held.query_ids)
  # Every label-2 pair of an evaluated query is in the label table.
  assert data.labels.has_relevant().all()


def test_heldout_eval_queries_caps_the_evaluation_at_the_lowest_hashes():
  cfg = _synthetic_data(heldout_query_fraction=0.5, heldout_eval_queries=0)
  _, held = inputs.train_relevance(cfg)
  whole = eval_inputs.stage2_eval(cfg, model_lib.model_config("tiny"), 8)
  assert len(whole.query_ids) > 5
  cfg.heldout_eval_queries = 5
  capped = eval_inputs.stage2_eval(cfg, model_lib.model_config("tiny"), 8)
  # The 5 lowest text hashes among the held-out queries (those with a label
  # 2: the synthetic ones all have one), in the split's order.
  hashes = dict(zip(held.query_ids, held.query_hashes()))
  want = sorted(held.query_ids, key=hashes.get)[:5]
  assert sorted(capped.query_ids) == sorted(want)
  assert set(capped.query_ids) < set(whole.query_ids)
  # Only the products judged for them are embedded.
  judged = {int(p) for q, p in zip(held.query, held.product)
            if held.query_ids[q] in want}
  assert set(capped.product_rows.tolist()) == judged
