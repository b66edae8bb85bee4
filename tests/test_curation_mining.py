"""Candidate mining at scale: the vectorised sampler against dense
references and hand-worked cases; the expanded set's de-duplication."""

import types

import numpy as np
import pytest

from dashclip_jax.curation import label_shards
from dashclip_jax.curation import mining
from dashclip_jax.curation.steps import mine


def _embeddings(num_queries, num_products, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(num_queries, dim)).astype(np.float32),
          rng.normal(size=(num_products, dim)).astype(np.float32))


def _rows(out, q):
  sel = out["query"] == q
  return out["product"][sel], out["source"][sel]


def test_knn_candidates_are_the_dense_argsort_top_k_minus_labelled():
  queries, products = _embeddings(7, 40)
  labelled = np.array([[0, 5], [2, 11], [2, 30], [6, 0]])
  out = mining.candidates(queries, products, k=6, num_random=0, seed=0,
                          labelled=labelled)
  dense = np.argsort(-(queries @ products.T), axis=1, kind="stable")[:, :6]
  for q in range(7):
    want = [p for p in dense[q] if [q, p] not in labelled.tolist()]
    got, source = _rows(out, q)
    assert got.tolist() == want and set(source) == {"knn"}


def test_candidates_have_no_labelled_pair_or_repeat_and_knn_come_first():
  queries, products = _embeddings(50, 60)
  rng = np.random.default_rng(1)
  labelled = np.stack([rng.integers(0, 50, 400), rng.integers(0, 60, 400)], 1)
  k, num_random = 5, 7
  out = mining.candidates(queries, products, k=k, num_random=num_random,
                          seed=3, labelled=labelled)
  top = np.argsort(-(queries @ products.T), axis=1, kind="stable")[:, :k]
  pairs = set(map(tuple, labelled.tolist()))
  for q in range(50):
    got, source = _rows(out, q)
    assert len(set(got.tolist())) == len(got)
    assert not {(q, p) for p in got.tolist()} & pairs
    num_knn = sum((q, p) not in pairs for p in top[q].tolist())
    assert source.tolist() == ["knn"] * num_knn + ["random"] * num_random
    assert not set(got[num_knn:].tolist()) & set(top[q].tolist())
  assert (np.diff(out["query"]) >= 0).all()  # Query order.


def test_candidates_do_not_depend_on_batching_or_on_the_other_queries():
  queries, products = _embeddings(30, 50)
  labelled = np.array([[3, 7], [12, 1], [29, 49]])
  kw = dict(k=4, num_random=6, seed=5, labelled=labelled)
  full = mining.candidates(queries, products, **kw)
  for batch_size in (1, 7, 64):
    out = mining.candidates(queries, products, batch_size=batch_size, **kw)
    for name in full:
      np.testing.assert_array_equal(out[name], full[name])
  # A subset mined alone, named by its indices: exactly its rows of the
  # full run (what mining.max_queries relies on).
  subset = np.array([3, 12, 20, 29])
  part = mining.candidates(queries[subset], products, query_index=subset,
                           **kw)
  rows = np.isin(full["query"], subset)
  for name in full:
    np.testing.assert_array_equal(part[name], full[name][rows])
  other = mining.candidates(queries, products, **{**kw, "seed": 6})
  assert not np.array_equal(other["product"], full["product"])


def test_random_candidates_are_uniform_over_the_rest():
  # One query repeated under many indices: the same top-3, fresh draws.
  # Each of the 17 other products is drawn by 4000 * 5 / 17 ~ 1176
  # queries; a binomial sd is ~ 30, so 150 is 5 sd.
  queries, products = _embeddings(1, 20)
  many = np.repeat(queries, 4000, axis=0)
  out = mining.candidates(many, products, k=3, num_random=5, seed=0)
  rand = out["product"][out["source"] == "random"]
  top = np.argsort(-(queries @ products.T)[0])[:3]
  counts = np.bincount(rand, minlength=20)
  assert (counts[top] == 0).all()
  rest = np.delete(counts, top)
  assert len(rand) == 4000 * 5
  assert np.abs(rest - 4000 * 5 / 17).max() < 150


def test_a_query_whose_rest_is_small_gets_all_of_it():
  queries, products = _embeddings(2, 6)
  out = mining.candidates(queries, products, k=2, num_random=10, seed=0,
                          labelled=np.array([[1, 4]]))
  top = np.argsort(-(queries @ products.T), axis=1)[:, :2]
  for q, labelled in ((0, set()), (1, {4})):
    got, source = _rows(out, q)
    want_rest = set(range(6)) - set(top[q].tolist()) - labelled
    assert sorted(got[source == "random"].tolist()) == sorted(want_rest)
    assert len(set(got.tolist())) == len(got)


def test_uniform_draws_are_a_function_of_seed_query_and_position():
  a = mining.uniform_draws(0, np.array([4, 9]), start=0, count=12, n=1000)
  b = mining.uniform_draws(0, np.array([9]), start=5, count=7, n=1000)
  np.testing.assert_array_equal(b[0], a[1, 5:])
  assert a.min() >= 0 and a.max() < 1000
  assert not np.array_equal(a[0], a[1])
  c = mining.uniform_draws(1, np.array([4]), start=0, count=12, n=1000)
  assert not np.array_equal(a[0], c[0])


def test_faiss_flat_search_gives_the_exact_candidates():
  queries, products = _embeddings(9, 30)
  kw = dict(k=5, num_random=3, seed=0, labelled=np.array([[1, 2]]))
  exact = mining.candidates(queries, products, **kw)
  flat = mining.candidates(queries, products, search="faiss",
                           faiss_index="flat", **kw)
  for name in exact:
    np.testing.assert_array_equal(flat[name], exact[name])
  with pytest.raises(ValueError, match="mining.search"):
    mining.candidates(queries, products, search="dense", **kw)


def test_nearest_queries_are_the_dense_top_k_minus_excluded():
  queries, products = _embeddings(20, 15)
  anchors = np.array([2, 9, 14])
  exclude = np.array([[0, 2], [5, 9], [19, 14], [7, 3]])
  out = mining.nearest_queries(products, queries, anchors, 4, exclude)
  dense = np.argsort(-(products[anchors] @ queries.T), axis=1)[:, :4]
  pairs = set(map(tuple, exclude.tolist()))
  want = [(q, p) for p, row in zip(anchors.tolist(), dense.tolist())
          for q in row if (q, p) not in pairs]
  assert list(zip(out["query"].tolist(), out["product"].tolist())) == want


def test_labelled_pairs_of_seed_query_ids_that_recur_unlabelled():
  # Seed queries s0, s1 (pairs s0-p4, s1-p2, s0-p7); unlabelled queries
  # u0, s0, u2: only unlabelled query 1 (id s0) has labelled pairs.
  seed = types.SimpleNamespace(query_ids=["s0", "s1"],
                               query=np.array([0, 1, 0]),
                               product=np.array([4, 2, 7]))
  ctx = types.SimpleNamespace(data=types.SimpleNamespace(seed=seed),
                              num_seed_queries=2,
                              query_ids=["s0", "s1", "u0", "s0", "u2"])
  assert mine.labelled_pairs(ctx).tolist() == [[1, 4], [1, 7]]


def test_expanded_keeps_the_first_row_of_each_pair_in_order():
  probs = np.eye(3, dtype=np.float32)
  seed = label_shards._rows(["q1", "q1", "q2"], ["a", "a", "b"],
                            ["p1", "p1", "p2"], probs, "seed", "")
  teacher = label_shards._rows(["q2", "q3", "q1"], ["b", "c", "a"],
                               ["p2", "p1", "p3"], probs[::-1], "teacher", "t")
  out = label_shards.expanded([seed, teacher])
  assert [(r["query_id"], r["product_id"], r["label"], r["label_source"])
          for r in out.to_pylist()] == [
              ("q1", "p1", 0, "seed"), ("q2", "p2", 2, "seed"),
              ("q3", "p1", 1, "teacher"), ("q1", "p3", 0, "teacher")]
  assert out.schema == label_shards.SCHEMA
  assert label_shards.expanded([]).num_rows == 0


class _CountingEmbedder:
  """Query i's embedding is [i, len(text)]; records what it embedded."""

  def __init__(self, log):
    self.log = log

  def queries(self, texts):
    self.log.append(("queries", list(texts)))
    return np.asarray([[float(t[1:]), len(t)] for t in texts], np.float32)

  def products(self, catalog):
    self.log.append(("products", len(catalog)))
    return np.ones((len(catalog), 2), np.float32)


def test_embeddings_cache_embeds_only_the_missing_query_rows(tmp_path,
                                                             monkeypatch):
  calls = []
  monkeypatch.setattr(mine, "_embedder", lambda ctx: _CountingEmbedder(calls))
  ctx = types.SimpleNamespace(
      config=types.SimpleNamespace(
          mining=types.SimpleNamespace(model="m"),
          teacher=types.SimpleNamespace(init="")),
      path=lambda name: str(tmp_path / name),
      queries=[f"q{i}" for i in range(6)], catalog=list(range(4)))
  q, p = mine.embeddings(ctx, np.array([4, 1]))
  np.testing.assert_array_equal(q[:, 0], [4, 1])
  assert calls == [("products", 4), ("queries", ["q1", "q4"])]
  q, p = mine.embeddings(ctx)  # The rest only; products cached.
  np.testing.assert_array_equal(q[:, 0], np.arange(6))
  assert calls[2:] == [("queries", ["q0", "q2", "q3", "q5"])]
  q, _ = mine.embeddings(ctx, np.array([5, 0]))  # All cached.
  np.testing.assert_array_equal(q[:, 0], [5, 0])
  assert len(calls) == 3 and p.shape == (4, 2)
  ctx.config.mining.model = "other"  # Another model: all anew.
  mine.embeddings(ctx, np.array([2]))
  assert calls[3:] == [("products", 4), ("queries", ["q2"])]
