"""The evaluation's outputs on disk: metrics.json and report.md."""

from __future__ import annotations

import json
import os

from dashclip_jax.evaluation import eval_data
from dashclip_jax.evaluation import metrics as metrics_lib

METRIC_KEYS = ("ndcg@10", "recall@1", "recall@5", "recall@10", "recall@50",
               "mrr", "aisle_acc", "aisle_f1", "relevance_acc",
               "relevance_f1")


def _fmt(v) -> str:
  if v is None:
    return "–"
  return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(results: dict[str, dict], data: eval_data.EvalData, cfg,
                 workdir: str) -> None:
  """metrics.json and report.md in `workdir` (cfg: a configs/eval.py one)."""
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  extra = sorted({k for m in results.values() for k in m} - set(METRIC_KEYS))
  cols = [k for k in METRIC_KEYS if any(k in m for m in results.values())]
  n = len(data.catalog)
  depth = eval_data.rank_depth(cfg, n)
  # Ranked lists stop at the depth: these metrics count what lies deeper as
  # never found, and carry a dagger in the tables.
  cut = metrics_lib.truncated_metrics(depth, n)
  head = lambda keys: " | ".join(k + ("†" if k in cut else "") for k in keys)
  lines = [
      "# DashCLIP evaluation", "",
      f"- Data: {data.description}.",
      f"- Checkpoint: `{cfg.checkpoint or '(given in memory)'}`"
      + (f"; init: `{cfg.init_checkpoint}`" if cfg.init_checkpoint else ""),
      "- Recall@K and MRR count label-2 products; NDCG@10 uses gain "
      "2^label - 1 with the ideal DCG of all labelled products; unlisted "
      "pairs are label 0; equal scores rank by catalog order.",
      f"- Ranking depth: {depth} of {n} products per query (exact KNN, "
      "catalog sharded over devices; BM25 the same depth)."
      + (f" † Truncated at depth {depth}: {', '.join(cut)} count a "
         f"label-2 product ranked below {depth} as not found (MRR is "
         f"MRR@{depth})." if cut else ""),
      "- Aisle probe: logistic regression on frozen product embeddings, "
      f"{cfg.data.probe_split} split (at most {cfg.data.max_probe_products} "
      f"products) -> {cfg.data.split} split. Relevance probe: logistic "
      "regression on [q, p, q*p, cos] -> label, query-disjoint halves.", "",
      "## Metrics", "",
      "| system | " + head(cols) + " |",
      "|---" * (len(cols) + 1) + "|"]
  for name, m in results.items():
    lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in cols)
                 + " |")
  if extra:
    lines += ["", "## Other measurements", "",
              "| system | " + head(extra) + " |",
              "|---" * (len(extra) + 1) + "|"]
    for name, m in results.items():
      lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in extra)
                   + " |")
  if os.path.exists(os.path.join(workdir, "gallery.html")):
    lines += ["", "## Gallery", "",
              "Each system's top products for a sample of queries, marked by "
              "their qrels labels: [gallery.html](gallery.html) "
              "(self-contained).", "", "![gallery.png](gallery.png)"]
  pngs = sorted(f for f in os.listdir(workdir)
                if f.endswith(".png") and f != "gallery.png")
  if pngs:
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in pngs]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
