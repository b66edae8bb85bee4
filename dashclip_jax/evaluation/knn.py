"""Nearest-neighbour search: exact sharded top-k in JAX; ANN recall.

Exact search streams the catalog in chunks of rows and shards each chunk
over one mesh axis: each device scores the (replicated) queries against its
slice, keeps its own top-k, and the k candidates of every shard are gathered
and merged with the running top-k of the chunks before. Only Q * k *
devices values cross devices, never the (Q, N) score matrix, and memory
grows with query_batch x (k + chunk), not with the catalog: the (N, E)
table goes to the devices one chunk at a time.

Ties: every merge sorts candidates by (score descending, product index
ascending), and `lax.top_k` keeps the lower index first within a shard, so
equal scores come out by ascending product index -- the same order as
`metrics.rank_by_score`. NaN scores rank last, like -inf.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PRODUCT_CHUNK = 65536
# Index of "no candidate yet" and of padding rows: loses every tie.
_NONE = np.iinfo(np.int32).max


def default_mesh(axis: str = "data") -> Mesh:
  """A 1-D mesh over this process's devices.

  Process-local: in a multi-process job the metrics are computed on process
  0 alone, and a mesh over every process's devices would wait for
  collectives the other processes never join.
  """
  return Mesh(np.asarray(jax.local_devices()), (axis,))


@functools.partial(jax.jit, static_argnames=("mesh", "axis"),
                   donate_argnums=(0, 1))
def _merge_chunk(top_v, top_i, queries, chunk, start, n, *, mesh, axis):
  """Running top-k (top_v, top_i (Qb, k), replicated) merged with the
  candidates of `chunk` (C, E), row-sharded: catalog rows start..start+C,
  those >= n padding."""
  k = top_v.shape[1]
  n_local = chunk.shape[0] // mesh.shape[axis]
  k_local = min(k, n_local)

  def local(top_v, top_i, q, p, start, n):
    s = jnp.einsum("qe,ne->qn", q, p, precision=lax.Precision.HIGHEST)
    row = start + lax.axis_index(axis) * n_local + jnp.arange(n_local)
    # Padding rows and NaN scores rank last; padding loses even to -inf.
    s = jnp.where((row < n)[None, :] & ~jnp.isnan(s), s, -jnp.inf)
    v, j = lax.top_k(s, k_local)  # (Qb, k_local), ties: lower row first.
    i = jnp.where(row[j] < n, row[j], _NONE)
    v = lax.all_gather(v, axis, axis=1, tiled=True)
    i = lax.all_gather(i, axis, axis=1, tiled=True)
    v, i = jnp.concatenate([top_v, v], 1), jnp.concatenate([top_i, i], 1)
    neg_v, i = lax.sort((-v, i), dimension=1, num_keys=2)  # By (-v, row).
    return -neg_v[:, :k], i[:, :k]

  return jax.shard_map(
      local, mesh=mesh, in_specs=(P(), P(), P(), P(axis), P(), P()),
      out_specs=(P(), P()), check_vma=False)(top_v, top_i, queries, chunk,
                                             start, n)


def exact_topk(queries: np.ndarray, products: np.ndarray, k: int,
               mesh: Mesh | None = None, axis: str = "data",
               query_batch: int = 1024, product_chunk: int = PRODUCT_CHUNK,
               query_group: int = 16 * 1024
               ) -> tuple[np.ndarray, np.ndarray]:
  """Exact inner-product top-k over the whole catalog, sharded over `axis`.

  Args:
    queries: float (Q, E).
    products: float (N, E); streamed in chunks whose rows are sharded over
      the mesh axis.
    k: neighbours per query, 1 <= k <= N.
    mesh: device mesh, all of it addressable by this process (default: this
      process's devices on one axis named `axis`).
    axis: mesh axis that shards the catalog rows.
    query_batch: queries scored per call (with product_chunk, bounds the
      (Qb, chunk / devices) score block).
    product_chunk: catalog rows on the devices at a time (rounded up to a
      multiple of the devices).
    query_group: queries on the devices at a time; the catalog streams once
      per group, so device memory stays bounded when curation mines 640K
      queries (their embeddings alone would be 650 MB at E=256).

  Returns:
    (scores float32 (Q, k), indices int32 (Q, k)), best first; NaN scores
    come back as -inf.
  """
  queries = np.asarray(queries, np.float32)
  products = np.asarray(products, np.float32)
  if queries.ndim != 2 or products.ndim != 2 or (
      queries.shape[1] != products.shape[1]):
    raise ValueError(f"queries {queries.shape} and products {products.shape} "
                     "must be (Q, E) and (N, E) with the same E")
  n = products.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"k={k} must be in [1, {n}] (catalog size)")
  mesh = mesh or default_mesh(axis)
  group = max(query_group // query_batch, 1) * query_batch
  parts = [_group_topk(queries[g:g + group], products, k, mesh, axis,
                       query_batch, product_chunk)
           for g in range(0, max(len(queries), 1), group)]
  return (np.concatenate([v for v, _ in parts]),
          np.concatenate([i for _, i in parts]))


def _group_topk(queries: np.ndarray, products: np.ndarray, k: int, mesh: Mesh,
                axis: str, query_batch: int, product_chunk: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """`exact_topk` of one group of queries: the catalog streamed once."""
  n = products.shape[0]
  shards = mesh.shape[axis]
  chunk = -(-min(product_chunk, n) // shards) * shards  # Same every chunk.
  replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P(axis))
  starts = range(0, max(len(queries), 1), query_batch)
  batches = [jax.device_put(queries[s:s + query_batch], replicated)
             for s in starts]
  tops = [(jax.device_put(np.full((len(q), k), -np.inf, np.float32),
                          replicated),
           jax.device_put(np.full((len(q), k), _NONE, np.int32), replicated))
          for q in batches]
  for start in range(0, n, chunk):
    part = products[start:start + chunk]
    part = jax.device_put(np.pad(part, ((0, chunk - len(part)), (0, 0))),
                          rows)
    tops = [_merge_chunk(v, i, q, part, np.int32(start), np.int32(n),
                         mesh=mesh, axis=axis)
            for (v, i), q in zip(tops, batches)]
  return (np.concatenate([np.asarray(v) for v, _ in tops]),
          np.concatenate([np.asarray(i) for _, i in tops]))


def ann_recall(approx: np.ndarray, exact: np.ndarray) -> float:
  """Mean over queries of |approx top-k  ∩  exact top-k| / k, both (Q, k)."""
  if approx.shape != exact.shape:
    raise ValueError(f"approx {approx.shape} vs exact {exact.shape}")
  hits = [len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx, exact)]
  return float(np.mean(hits) / exact.shape[1])
