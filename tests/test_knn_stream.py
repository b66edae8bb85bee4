"""knn.exact_topk streamed over product chunks vs one stable numpy sort."""

import jax
import numpy as np
import pytest

from dashclip_jax.evaluation import knn


def numpy_topk(queries, products, k):
  scores = queries @ products.T
  scores[np.isnan(scores)] = -np.inf  # exact_topk ranks NaN last.
  idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, idx, 1), idx


@pytest.mark.parametrize("n,k,chunk", [(37, 5, 10), (37, 37, 8),
                                       (50, 20, 7), (9, 9, 1000)])
def test_streamed_topk_equals_a_stable_sort(n, k, chunk):
  assert jax.device_count() == 8
  rng = np.random.default_rng(n + chunk)
  # Small integers: exact fp32 dot products with many ties, so the tie rule
  # (lower product index first) is checked across shards and chunks.
  products = rng.integers(-2, 3, size=(n, 6)).astype(np.float32)
  queries = rng.integers(-2, 3, size=(13, 6)).astype(np.float32)
  want_val, want_idx = numpy_topk(queries, products, k)
  for mesh in (knn.default_mesh(), jax.sharding.Mesh(
      np.asarray(jax.devices()[:3]), ("data",))):
    # query_group 10 (rounded to 2 batches of 5): groups of 10 and 3.
    for group in (10, 1 << 14):
      val, idx = knn.exact_topk(queries, products, k, mesh=mesh,
                                query_batch=5, product_chunk=chunk,
                                query_group=group)
      assert idx.dtype == np.int32 and val.dtype == np.float32
      np.testing.assert_array_equal(idx, want_idx)
      np.testing.assert_array_equal(val, want_val)


def test_nan_and_infinite_scores_rank_last_by_index():
  # Query 0 is NaN: every score NaN, so it ranks products in index order.
  # Product 2 is NaN: -inf for the others, tied with product 4's -inf for
  # query 1 (lower index first) and with its NaN (-inf * 0) for query 2.
  products = np.array([[1, 0], [0, 1], [np.nan, 0], [1, 1], [-np.inf, 0]],
                      np.float32)
  queries = np.array([[np.nan, 0], [1, 0], [0, 1]], np.float32)
  with np.errstate(invalid="ignore"):
    want_val, want_idx = numpy_topk(queries, products, 5)
  val, idx = knn.exact_topk(queries, products, 5, product_chunk=2)
  np.testing.assert_array_equal(idx, want_idx)
  np.testing.assert_array_equal(idx[0], [0, 1, 2, 3, 4])
  np.testing.assert_array_equal(idx[1], [0, 3, 1, 2, 4])
  np.testing.assert_array_equal(idx[2], [1, 3, 0, 2, 4])
  np.testing.assert_array_equal(val, want_val)
