r"""Curation mining at DashCLIP scale: candidates() of main beside this tree's.

  PYTHONPATH=$PWD python bench/mining_scale.py --products=400000 \
      --queries=2048 --dim=256

Random unit embeddings (Q queries, N products, E dims), k KNN candidates
and `num_random` random ones per query, no labelled pairs. Each side runs
in its own process (its peak RSS is its own): "old" is
dashclip_jax/curation/mining.py as `--old_ref` has it (`git show` into a
temporary module, never a copy in the tree), "new" is this tree's; the
new side also times the sampler over `--new_queries` queries and the
exact top-k alone. The last line extrapolates both to `--full_queries`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
  x = rng.standard_normal((n, dim), dtype=np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _old_module(ref: str):
  """main's mining.py as a throwaway module (imports the installed rest)."""
  src = subprocess.run(
      ["git", "show", f"{ref}:dashclip_jax/curation/mining.py"], cwd=ROOT,
      check=True, capture_output=True, text=True).stdout
  path = os.path.join(tempfile.mkdtemp(), "old_mining.py")
  with open(path, "w") as f:
    f.write(src)
  spec = importlib.util.spec_from_file_location("old_mining", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, *args, **kwargs):
  """-> (fn's result, wall seconds, this process's CPU seconds)."""
  cpu = lambda: sum(os.times()[:2])
  wall, used = time.perf_counter(), cpu()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - wall, cpu() - used


def side(args) -> dict:
  """One side's timings in this process (seconds, CPU seconds, RSS)."""
  # pylint: disable=g-import-not-at-top
  from dashclip_jax.curation import mining
  from dashclip_jax import index as index_lib
  from dashclip_jax.evaluation import knn
  # pylint: enable=g-import-not-at-top
  rng = np.random.default_rng(0)
  products = _unit(rng, args.products, args.dim)
  queries = _unit(rng, max(args.queries, args.new_queries), args.dim)
  rss_before = _rss_mib()
  kw = dict(k=args.k, num_random=args.num_random, seed=0)
  # Warm-up: compiles the top-k for a full query batch and the tail's.
  knn.exact_topk(queries[:1024 + args.queries % 1024], products, args.k)
  q = queries[:args.queries]
  fixed = 0.0  # Seconds that do not grow with the queries (faiss's index).
  if args.side == "old":
    cand, seconds, cpu = _timed(_old_module(args.old_ref).candidates, q,
                                products, labelled=set(), **kw)
  else:
    cand, seconds, cpu = _timed(mining.candidates, q, products,
                                search=args.search,
                                faiss_index=args.faiss_index, **kw)
    if args.search == "faiss":
      fixed = _timed(index_lib.build_index, products, kind=args.faiss_index)[1]
  out = dict(side=args.side, queries=args.queries, seconds=seconds, cpu=cpu,
             fixed=fixed, pairs=len(cand["query"]), peak_rss_mib=_rss_mib(),
             rss_before_mib=rss_before)
  if args.side == "new":
    out["topk_seconds"] = _timed(mining.topk, q, products, args.k,
                                 args.search, args.faiss_index)[1]
    # The sampler alone over more queries (the top-k is their own).
    top = np.tile(np.argsort(-(q[:64] @ products.T), 1)[:, :args.k],
                  (-(-args.new_queries // 64), 1))[:args.new_queries]
    index = np.arange(len(top), dtype=np.int64)
    tracemalloc.start()  # numpy reports its buffers to it.
    start = time.perf_counter()
    for s in range(0, len(top), 16384):
      mining.random_products(top[s:s + 16384], index[s:s + 16384],
                             args.products, args.num_random, 0,
                             np.zeros(0, np.int64))
    out["sampler_ms_per_query"] = (1e3 * (time.perf_counter() - start) /
                                   len(top))
    out["sampler_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    out["sampler_queries"] = len(top)
    out["peak_rss_mib"] = _rss_mib()
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--products", type=int, default=400_000)
  p.add_argument("--queries", type=int, default=2048)
  p.add_argument("--new_queries", type=int, default=65_536,
                 help="queries the new sampler alone is timed over")
  p.add_argument("--full_queries", type=int, default=640_000)
  p.add_argument("--dim", type=int, default=256)
  p.add_argument("--k", type=int, default=20)
  p.add_argument("--num_random", type=int, default=5)
  p.add_argument("--search", default="exact", help="new side: mining.search")
  p.add_argument("--faiss_index", default="flat",
                 help="new side, --search=faiss: mining.faiss_index")
  p.add_argument("--old_ref", default="main")
  p.add_argument("--sides", default="old,new")
  p.add_argument("--side", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.side:
    print(json.dumps(side(args)))
    return
  results = {}
  for name in args.sides.split(","):
    run = subprocess.run([sys.executable, __file__, f"--side={name}"] + [
        a for a in sys.argv[1:] if not a.startswith("--side")],
                         check=True, capture_output=True, text=True)
    results[name] = json.loads(run.stdout.strip().splitlines()[-1])
  print(f"N={args.products} products, E={args.dim}, k={args.k}, "
        f"num_random={args.num_random}, Q={args.queries} queries, new "
        f"search={args.search}"
        f"{'/' + args.faiss_index if args.search == 'faiss' else ''}; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
  for name, r in results.items():
    r["ms_per_query"] = 1e3 * (r["seconds"] - r["fixed"]) / r["queries"]
    extra = ""
    if name == "new":
      topk = 1e3 * r["topk_seconds"] / r["queries"]
      build = (f" (faiss index build {r['fixed']:.1f} s of it)"
               if r["fixed"] else "")
      extra = (f"\n      top-k alone {topk:.3f} ms/query{build}; "
               f"sampler alone {r['sampler_ms_per_query']:.4f} ms/query over "
               f"{r['sampler_queries']} queries, "
               f"{r['sampler_peak_mib']:.0f} MiB peak")
    print(f"{name:>4}: {r['ms_per_query']:8.3f} ms/query ({r['seconds']:.1f} "
          f"s wall, {1e3 * r['cpu'] / r['queries']:.3f} CPU-ms/query), "
          f"{r['pairs']} pairs, peak RSS {r['peak_rss_mib']:.0f} MiB "
          f"({r['rss_before_mib']:.0f} with the embeddings alone){extra}")
  def extrapolated(r):
    minutes = (r["fixed"] + r["ms_per_query"] * args.full_queries / 1e3) / 60
    fixed = f" + {r['fixed']:.0f} s" if r["fixed"] else ""
    return f"{minutes:.1f} min ({r['ms_per_query']:.3f} ms/query{fixed})"
  full = " vs ".join(f"{name} {extrapolated(r)}"
                     for name, r in results.items())
  print(f"extrapolated to {args.full_queries} queries over {args.products} "
        f"products: {full}")


if __name__ == "__main__":
  main()
