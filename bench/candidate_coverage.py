r"""How much of the truth a curation's candidate pool can reach (issue 30).

  python bench/candidate_coverage.py --workdir=/tmp/cur10 --ks=20,50,100,200

For a curation run in split mode (`seed_data.fraction`, so the unlabelled
queries' true labels are known), the share of their true label-1 and
label-2 pairs that fall in each query's top k products by the mining
embeddings (`<workdir>/embeddings.npz`, the teacher start's), per k: the
teacher can label only what the pool holds. Then the same for a pool made
of every product in the aisles of the query's top `--aisle_top` products.

Top-k membership is score >= the query's k-th best score, computed a block
of queries at a time (no queries x products array is kept).
"""

from __future__ import annotations

import argparse
import json
import os

import ml_collections
import numpy as np

from dashclip_jax.curation.steps import context as context_lib
from dashclip_jax.data import sources


def kth_scores(queries: np.ndarray, products: np.ndarray, ks: list[int],
               block: int = 256) -> np.ndarray:
  """(Q, len(ks)): each query's k-th best product score, per k."""
  out = np.empty((len(queries), len(ks)), np.float32)
  for s in range(0, len(queries), block):
    scores = queries[s:s + block] @ products.T
    top = -np.sort(-np.partition(scores, -max(ks), axis=1)[:, -max(ks):],
                   axis=1)
    out[s:s + block] = top[:, np.asarray(ks) - 1]
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
  p.add_argument("--workdir", required=True, help="a finished curation run")
  p.add_argument("--ks", default="20,50,100,200")
  p.add_argument("--aisle_top", type=int, default=5)
  args = p.parse_args()
  with open(os.path.join(args.workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.seed_data.path:
    raise SystemExit(f"{args.workdir}: seed_data.path is set; the true "
                     "labels of its unlabelled queries are not known")
  ctx = context_lib.context(config, args.workdir)
  truth = sources.load_sources(config.data).train_relevance
  emb = np.load(os.path.join(args.workdir, "embeddings.npz"))
  ks = [int(k) for k in args.ks.split(",")]

  # Query embeddings of the unlabelled queries, by truth's query index.
  row_of = {q: i for i, q in enumerate(ctx.query_ids)}
  emb_row = np.full(len(ctx.query_ids), -1)
  emb_row[emb["query_rows"]] = np.arange(len(emb["query_rows"]))
  unlabelled = set(ctx.query_ids[ctx.num_seed_queries:])
  t_rows = np.asarray([emb_row[row_of[q]] if q in unlabelled else -1
                       for q in truth.query_ids])
  keep = (t_rows[truth.query] >= 0) & (truth.label > 0)
  q_emb = emb["queries"][t_rows[truth.query[keep]]]
  pair_score = np.einsum("md,md->m", q_emb, emb["products"][truth.product[keep]])
  used = np.unique(t_rows[t_rows >= 0])
  kth = np.zeros((len(emb["query_rows"]), len(ks)), np.float32)
  kth[used] = kth_scores(emb["queries"][used], emb["products"], ks)
  label = truth.label[keep]
  print(f"{args.workdir}: {len(used)} unlabelled queries, "
        f"{(label == 1).sum()} true label-1 and {(label == 2).sum()} "
        "label-2 pairs")
  print("| pool | pairs to label per query | label-1 reached | label-2 reached |")
  print("|---|---:|---:|---:|")
  inside = pair_score[:, None] >= kth[t_rows[truth.query[keep]]]
  for j, k in enumerate(ks):
    print(f"| top {k} | {k} | {inside[label == 1, j].mean():.3f} | "
          f"{inside[label == 2, j].mean():.3f} |")

  # Aisle pool: every product in the aisles of the query's top products,
  # as a (queries, aisles) mask.
  category = np.asarray(ctx.catalog.category)
  num_aisles = len(ctx.catalog.category_names)
  aisle_sizes = np.bincount(category[category >= 0], minlength=num_aisles)
  mask = np.zeros((len(emb["query_rows"]), num_aisles), bool)
  for s in range(0, len(used), 256):
    block = used[s:s + 256]
    top = np.argpartition(-(emb["queries"][block] @ emb["products"].T),
                          args.aisle_top, axis=1)[:, :args.aisle_top]
    aisles = category[top]
    rows = np.repeat(block, args.aisle_top)[aisles.ravel() >= 0]
    mask[rows, aisles.ravel()[aisles.ravel() >= 0]] = True
  pair_aisle = category[truth.product[keep]]
  in_aisles = (pair_aisle >= 0) & mask[t_rows[truth.query[keep]],
                                       np.maximum(pair_aisle, 0)]
  pool = (mask[used] * aisle_sizes).sum(axis=1).mean()
  print(f"| aisles of the top {args.aisle_top} | {pool:.0f} | "
        f"{in_aisles[label == 1].mean():.3f} | {in_aisles[label == 2].mean():.3f} |")


if __name__ == "__main__":
  main()
