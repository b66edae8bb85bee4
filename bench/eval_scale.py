"""Peak memory of the evaluation's ranking at DashCLIP scale, old vs new.

  python bench/eval_scale.py [--queries 1000] [--products 400000] [--dim 256]
      [--old_products 25000,50000,100000] [--old_ref ab8b592]

What is measured: the part of `evaluation.run` whose memory grows with
queries x products -- the exact KNN of Q unit-norm queries over N unit-norm
products, the graded metrics, and BM25 over short titles with its metrics --
on synthetic data: about 10 judged pairs per query (one or more label 2,
some 1 and listed 0), 3-6 word titles over a 5,000-word vocabulary.

  old  the code at --old_ref (before issue 28; a `git archive` copy of its
       dashclip_jax): dense int8 (Q, N) labels and bool (Q, N) judged (as
       eval_data built them), knn.depth=0 (every product ranked), dense
       float64 (Q, N) BM25 fully sorted by rank_by_score.
  new  this tree: SparseQrels, the streamed exact top-k at knn.depth (1000),
       `baselines.bm25_topk` (blocks of queries, running top-k).
  new+probes  the same plus the relevance probe and the cosine-by-label
       plot (at full size only; the old code's need a dense (Q, N) too).

Each (code, N) runs in its own process; the figure is the peak resident
memory (VmHWM, reset once the data is built and JAX started) minus the
resident memory at that point, i.e. what the evaluation adds above its
inputs. The old code
is run only up to --old_products (its (Q, N) arrays need ~50 bytes per
pair: ~20 GB at 1,000 x 400K, more than this machine can spare); its
400K figure is extrapolated linearly from the largest two and printed as
such. Metrics of both codes at the same N are printed side by side:
NDCG@10 and recall@K must agree; MRR may differ only where a query's first
label-2 product ranks below the depth.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("ndcg@10", "recall@1", "recall@50", "mrr")


def _status_mb(key: str) -> float:
  """VmRSS (resident now) or VmHWM (peak resident) of this process, MB."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(key + ":"):
        return int(line.split()[1]) / 1024
  raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak() -> None:
  """Starts VmHWM again from VmRSS (Linux): the data's own build-up peak
  must not hide the evaluation's."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def make_data(q: int, n: int, dim: int, pairs: int, seed: int = 0):
  """(query_emb (q, dim), product_emb (n, dim), judged (qi, pi, label),
  query texts, titles), the same for both codes."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(
      np.float32)
  qe, pe = unit(rng.normal(size=(q, dim))), unit(rng.normal(size=(n, dim)))
  # `pairs` distinct products per query, spread over the catalog.
  qi = np.repeat(np.arange(q), pairs)
  pi = (rng.integers(0, n, q)[:, None]
        + np.arange(pairs) * (n // pairs)).reshape(-1) % n
  label = rng.choice(3, q * pairs, p=[0.3, 0.3, 0.4]).astype(np.int8)
  label[::pairs] = 2  # Every query has a label 2.
  # Label-2 products lie near their query, label 1 a little further.
  near = {2: 0.3, 1: 1.0}
  for lab, noise in near.items():
    m = label == lab
    pe[pi[m]] = unit(qe[qi[m]] + noise * rng.normal(size=(m.sum(), dim)) /
                     np.sqrt(dim))
  vocab = np.array([f"w{i}" for i in range(5000)])
  words = rng.integers(0, len(vocab), (n, 6))
  lens = rng.integers(3, 7, n)
  titles = [" ".join(vocab[w[:k]]) for w, k in zip(words, lens)]
  # A query shares its first two words with its first label-2 product.
  first = pi[::pairs]
  queries = [" ".join(vocab[words[p, :2]]) for p in first]
  return qe, pe, (qi, pi, label), queries, titles


def child(args) -> None:
  """One measurement; prints a JSON line."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import dashclip_jax  # pylint: disable=g-import-not-at-top
  from dashclip_jax.evaluation import baselines  # pylint: disable=g-import-not-at-top
  from dashclip_jax.evaluation import knn  # pylint: disable=g-import-not-at-top
  from dashclip_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top
  from dashclip_jax.evaluation import qrels as qrels_lib  # pylint: disable=g-import-not-at-top
  qe, pe, (qi, pi, label), queries, titles = make_data(
      args.queries, args.n, args.dim, args.pairs)
  ids = [f"q{i}" for i in range(args.queries)]
  jax.devices()
  gc.collect()
  _reset_peak()
  before = _status_mb("VmRSS")
  t = time.perf_counter()
  q, n = args.queries, args.n
  if args.code == "old":
    labels = np.zeros((q, n), np.int8)  # As the old eval_data built them.
    labels[qi, pi] = label
    judged = np.zeros((q, n), bool)
    judged[qi, pi] = True
    _, ranking = knn.exact_topk(qe, pe, n)  # knn.depth=0: all N.
    emb = metrics.retrieval_metrics(ranking, labels, ids)
    del ranking
    ranking = metrics.rank_by_score(baselines.bm25_scores(queries, titles))
    bm25 = metrics.retrieval_metrics(ranking, labels, ids)
  else:
    depth = min(args.depth, n)
    qrels = qrels_lib.SparseQrels.from_pairs(qi, pi, label, q, n)
    _, ranking = knn.exact_topk(qe, pe, depth)
    emb = metrics.retrieval_metrics(ranking, qrels, ids)
    scorer = baselines.bm25_scorer(titles)
    ranking = baselines.bm25_topk(queries, depth, scorer, n)
    bm25 = metrics.retrieval_metrics(ranking, qrels, ids)
    if args.code == "new+probes":  # What else evaluate_embeddings runs.
      from dashclip_jax.evaluation import plots  # pylint: disable=g-import-not-at-top
      from dashclip_jax.evaluation import probes  # pylint: disable=g-import-not-at-top
      probes.relevance_probe(qe, pe, qrels, ids, zeros_per_query=20)
      with tempfile.TemporaryDirectory() as d:
        plots.cosine_by_relevance_plot(qe, pe, qrels, os.path.join(d, "c.png"))
  print(json.dumps(dict(
      code=args.code, n=n, package=os.path.dirname(dashclip_jax.__file__),
      setup_mb=before, peak_mb=_status_mb("VmHWM"),
      seconds=time.perf_counter() - t,
      knn={k: emb[k] for k in KEYS}, bm25={k: bm25[k] for k in KEYS})))


def measure(code: str, n: int, args, package_root: str) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", code,
         f"--n={n}", f"--queries={args.queries}", f"--dim={args.dim}",
         f"--pairs={args.pairs}", f"--depth={args.depth}"]
  env = {**os.environ, "PYTHONPATH": package_root, "JAX_PLATFORMS": "cpu",
         "HF_HUB_OFFLINE": "1"}
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        cwd=package_root, check=False)
  if proc.returncode:
    raise RuntimeError(f"{code} N={n} failed:\n{proc.stderr[-3000:]}")
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  if not out["package"].startswith(package_root):
    raise RuntimeError(f"{code}: imported {out['package']}, not the copy "
                       f"under {package_root}")
  return out


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--queries", type=int, default=1000)
  p.add_argument("--products", type=int, default=400_000)
  p.add_argument("--dim", type=int, default=256)
  p.add_argument("--pairs", type=int, default=10)
  p.add_argument("--depth", type=int, default=1000)
  p.add_argument("--old_products", default="25000,50000,100000")
  p.add_argument("--old_ref", default="ab8b592",
                 help="commit of the code before issue 28")
  p.add_argument("--child", choices=("old", "new", "new+probes"))
  p.add_argument("--n", type=int)
  args = p.parse_args()
  if args.child:
    args.code = args.child
    child(args)
    return
  olds = [int(x) for x in args.old_products.split(",") if x]
  with tempfile.TemporaryDirectory() as old_root:
    archive = subprocess.run(["git", "-C", REPO, "archive", args.old_ref,
                              "dashclip_jax"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", old_root], input=archive.stdout,
                   check=True)
    rows = []
    for n in olds + [args.products]:
      for code in ("old", "new", "new+probes"):
        if (code == "old") != (n in olds) and code != "new":
          continue  # Old: only where it fits; probes: at full size.
        r = measure(code, n, args, old_root if code == "old" else REPO)
        rows.append(r)
        print(f"{code:10s} N={n:7d}: +{r['peak_mb'] - r['setup_mb']:8.0f} MB "
              f"above the data ({r['setup_mb']:.0f} MB), peak "
              f"{r['peak_mb']:.0f} MB, {r['seconds']:.1f}s; knn "
              + " ".join(f"{k} {v:.6f}" for k, v in r["knn"].items())
              + "; bm25 "
              + " ".join(f"{k} {v:.6f}" for k, v in r["bm25"].items()),
              flush=True)
  extra = {(r["code"], r["n"]): r["peak_mb"] - r["setup_mb"] for r in rows}
  if len(olds) >= 2:
    (n0, n1) = sorted(olds)[-2:]
    slope = (extra["old", n1] - extra["old", n0]) / (n1 - n0)
    guess = extra["old", n1] + slope * (args.products - n1)
    print(f"old N={args.products}: ~+{guess:.0f} MB (extrapolated linearly "
          f"from N={n0}, {n1}; not run)")
  print(f"new N={args.products}: +{extra['new', args.products]:.0f} MB "
        f"(measured), {args.queries} queries, dim {args.dim}, depth "
        f"{args.depth}")


if __name__ == "__main__":
  main()
