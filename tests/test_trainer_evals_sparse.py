"""The trainers' evaluations without dense (Q, N) matrices vs the dense
formulas they replaced (kept here as references)."""

import jax
import numpy as np
import pytest

from dashclip_jax.train import sharding
from dashclip_jax.trainers import eval_inputs
from dashclip_jax.trainers import stage1
from dashclip_jax.trainers import stage2

from test_sparse_qrels import dense_reference


def dense_hit_at_1(queries, items, ids):
  """stage1.hit_at_1 before streaming: N x N scores and labels."""
  scores = queries @ items.T
  scores[np.isnan(scores)] = -np.inf
  top = np.argsort(-scores, axis=1, kind="stable")[:, :1]
  labels = np.where(ids[:, None] == ids[None, :], 2, 0)
  return float((np.take_along_axis(labels, top, 1) == 2).any(axis=1).mean())


@pytest.mark.parametrize("seed", range(3))
def test_hit_at_1_equals_the_dense_formula(seed):
  rng = np.random.default_rng(seed)
  n = 41
  ids = rng.integers(0, 15, n)  # A product id on several rows.
  # Small integers: exact ties, which go to the lower row.
  img = rng.integers(-1, 2, (n, 3)).astype(np.float32)
  txt = rng.integers(-1, 2, (n, 3)).astype(np.float32)
  img[3], txt[[5, 17]] = np.nan, np.nan  # Ranked last, as -inf.
  for q, it in ((img, txt), (txt, img)):
    with np.errstate(invalid="ignore"):
      want = dense_hit_at_1(q, it, ids)
    assert stage1.hit_at_1(q, it, ids) == want
  assert stage1.hit_at_1(img[:0], txt[:0], ids[:0]) != 0  # NaN, no crash.


def dense_stage2_metrics(dense, q_index, queries, products, ok):
  """stage2.evaluate's metrics before SparseQrels: dense (Q, P) labels with
  -1 where unjudged, unjudged scored -inf, all readable products ranked."""
  labels = dense[q_index][:, ok]
  ranked = (labels == 2).any(axis=1)
  labels = labels[ranked]
  scores = queries[ranked] @ products[ok].T
  scores[(labels < 0) | np.isnan(scores)] = -np.inf
  ranking = np.argsort(-scores, axis=1, kind="stable")
  m = dense_reference(ranking, np.maximum(labels, 0))
  return {k: float(m[k].mean()) for k in stage2.EVAL_METRICS}, ranked.sum()


@pytest.mark.parametrize("seed", range(4))
def test_stage2_evaluate_equals_the_dense_formula(seed):
  rng = np.random.default_rng(seed)
  n_q, n_p, n_table, e = 9, 23, 30, 4
  dense = rng.choice([-1, 0, 1, 2], size=(n_q, n_p), p=[0.5, 0.2, 0.15, 0.15])
  dense[0] = np.where(dense[0] == 2, 1, dense[0])  # Never ranked.
  features = rng.normal(size=(n_table, e)).astype(np.float32)
  features[rng.integers(0, n_table, 2)] = np.nan
  table_ok = rng.random(n_table) > 0.15  # Unreadable images.
  rows = np.sort(rng.choice(n_table, n_p, replace=False))
  queries = rng.normal(size=(n_q, e)).astype(np.float32)
  queries[rng.integers(1, n_q)] = np.nan
  if seed == 0:  # Exact ties.
    features, queries = np.round(features), np.round(queries)
  order = rng.permutation(n_q)  # The order the batches bring the queries.
  pad = np.concatenate([order, [0]])
  batches = [{"query_emb": queries[pad[s:s + 4]],
              "query_index": pad[s:s + 4].astype(np.int32),
              "valid": (np.arange(s, s + 4) < n_q)[:len(pad[s:s + 4])]
                       .astype(np.int32)} for s in range(0, n_q + 1, 4)]
  data = eval_inputs.Stage2Eval(
      product_rows=rows, product_batches=None, query_batches=batches,
      labels=dense, query_ids=[f"q{i}" for i in range(n_q)])
  mesh = sharding.make_mesh([("data", 1), ("fsdp", 1), ("tensor", 1)],
                            devices=jax.devices()[:1])
  embed_queries = jax.jit(lambda p, b: (b["query_emb"], b["query_index"],
                                        b["valid"]))
  fns = (None, embed_queries, lambda params, f: f)
  got = stage2.evaluate(fns, {}, data, mesh,
                        features=(features[rows], table_ok[rows]))
  with np.errstate(invalid="ignore"):
    want, n_ranked = dense_stage2_metrics(dense, order, queries[order],
                                          features[rows], table_ok[rows])
  assert got["eval/queries_ranked"] == n_ranked
  assert got["eval/products_ranked"] == table_ok[rows].sum()
  for k in stage2.EVAL_METRICS:
    assert got[f"eval/{k}"] == pytest.approx(want[k], rel=0, abs=1e-9), k
