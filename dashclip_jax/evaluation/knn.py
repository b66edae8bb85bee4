"""Nearest-neighbour search: exact sharded top-k in JAX, approximate with faiss.

Exact search shards the catalog rows over one mesh axis: each device scores
the (replicated) queries against its slice, keeps its own top-k, and the k
candidates of every shard are gathered and merged by a second top-k. Only
Q * k * devices values cross devices, never the (Q, N) score matrix.

Ties: `lax.top_k` keeps the lower index first, shards hold contiguous row
ranges and are gathered in order, so equal scores come out by ascending
product index -- the same order as `metrics.rank_by_score`.
"""

import functools

import faiss
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def default_mesh(axis: str = "data") -> Mesh:
  """A 1-D mesh over this process's devices.

  Process-local: in a multi-process job the metrics are computed on process
  0 alone, and a mesh over every process's devices would wait for
  collectives the other processes never join.
  """
  return Mesh(np.asarray(jax.local_devices()), (axis,))


@functools.partial(jax.jit, static_argnames=("k", "mesh", "axis"))
def _sharded_topk(queries, products, valid, *, k, mesh, axis):
  """queries (Q, E) replicated; products (Np, E), valid (Np,) row-sharded."""
  n_local = products.shape[0] // mesh.shape[axis]
  k_local = min(k, n_local)

  def local(q, p, ok):
    s = jnp.einsum("qe,ne->qn", q, p, precision=lax.Precision.HIGHEST)
    s = jnp.where(ok[None, :], s, -jnp.inf)  # Padding rows never win.
    v, i = lax.top_k(s, k_local)  # (Q, k_local)
    i = i + lax.axis_index(axis) * n_local  # Local -> global row index.
    # (Q, shards * k_local), shard-major: candidate order == index order.
    v = lax.all_gather(v, axis, axis=1, tiled=True)
    i = lax.all_gather(i, axis, axis=1, tiled=True)
    v, j = lax.top_k(v, k)
    return v, jnp.take_along_axis(i, j, axis=1)

  return jax.shard_map(
      local, mesh=mesh, in_specs=(P(), P(axis), P(axis)),
      out_specs=(P(), P()), check_vma=False)(queries, products, valid)


def exact_topk(queries: np.ndarray, products: np.ndarray, k: int,
               mesh: Mesh | None = None, axis: str = "data",
               query_batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Exact inner-product top-k over the whole catalog, sharded over `axis`.

  Args:
    queries: float (Q, E).
    products: float (N, E); rows are sharded over the mesh axis.
    k: neighbours per query, 1 <= k <= N.
    mesh: device mesh, all of it addressable by this process (default: this
      process's devices on one axis named `axis`).
    axis: mesh axis that shards the catalog rows.
    query_batch: queries scored per call (bounds the (Qb, N/devices) block).

  Returns:
    (scores float32 (Q, k), indices int32 (Q, k)), best first.
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
  shards = mesh.shape[axis]
  pad = -n % shards
  products = np.pad(products, ((0, pad), (0, 0)))
  valid = np.arange(n + pad) < n
  row_sharding = NamedSharding(mesh, P(axis))
  products = jax.device_put(products, row_sharding)
  valid = jax.device_put(valid, row_sharding)
  scores, indices = [], []
  for s in range(0, max(len(queries), 1), query_batch):
    q = jax.device_put(queries[s:s + query_batch], NamedSharding(mesh, P()))
    v, i = _sharded_topk(q, products, valid, k=k, mesh=mesh, axis=axis)
    scores.append(np.asarray(v))
    indices.append(np.asarray(i))
  return np.concatenate(scores), np.concatenate(indices)


def build_index(products: np.ndarray, kind: str = "hnsw", hnsw_m: int = 32,
                ef_construction: int = 200, ef_search: int = 128,
                nlist: int = 0, nprobe: int = 8) -> faiss.Index:
  """A faiss inner-product index over float (N, E) product embeddings.

  Args:
    products: float (N, E), L2-normalised for cosine search.
    kind: "hnsw" (graph, no training), "ivf" (k-means cells) or "flat"
      (exact, for tests and small catalogs).
    hnsw_m, ef_construction, ef_search: HNSW graph degree and beam widths.
    nlist, nprobe: IVF cells (0: about 4 * sqrt(N)) and cells visited.
  """
  x = np.ascontiguousarray(products, np.float32)
  d = x.shape[1]
  if kind == "hnsw":
    index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search
  elif kind == "ivf":
    nlist = nlist or max(1, min(len(x) // 39, int(4 * np.sqrt(len(x)))))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.nprobe = nprobe
  elif kind == "flat":
    index = faiss.IndexFlatIP(d)
  else:
    raise ValueError(f"unknown index kind {kind!r}; use hnsw, ivf or flat")
  index.add(x)
  return index


def ann_search(index: faiss.Index, queries: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
  """(scores float32 (Q, k), indices int64 (Q, k)); -1 where fewer found."""
  return index.search(np.ascontiguousarray(queries, np.float32), k)


def ann_recall(approx: np.ndarray, exact: np.ndarray) -> float:
  """Mean over queries of |approx top-k  ∩  exact top-k| / k, both (Q, k)."""
  if approx.shape != exact.shape:
    raise ValueError(f"approx {approx.shape} vs exact {exact.shape}")
  hits = [len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx, exact)]
  return float(np.mean(hits) / exact.shape[1])
