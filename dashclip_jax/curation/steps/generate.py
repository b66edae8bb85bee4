"""The generate step: new shopping queries for TRAIN products, before mine.

`generate.writer` picks the writer: "template" (`curation.query_writers`:
attribute templates and a synonym table, the baseline) or "llm" (the GGUF
LLM, `gpt.query_writer`: few-shot from seed queries, sampled). Every draft
is cleaned, filtered (length; language: its share of ASCII letters), and
dropped when it is an exact or near (same token set) duplicate of a
`qrels_test.csv` query, or of a query already written or known (seed,
unlabelled). Each drop is counted by reason.

Output: <workdir>/generated/part-SSSSS-of-NNNNN.parquet, rows (query_id,
query, product_id, writer) for `shard_size` products each, in a fixed
product order; a shard is written under a temporary name and renamed, its
counts in its Parquet metadata. A rerun (after kill -9 too) reads the
finished shards (their queries are the de-duplication state) and writes
only the missing ones: the same files as one uninterrupted run, no query
written twice. generate.json records the settings; other settings stop the
rerun instead of mixing outputs.

The kept queries then join the unlabelled queries (`add_generated`): the
mine step finds their candidates, the label step labels them and the
expand step keeps the confident rows, as for any unlabelled query.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import auto as tqdm

from dashclip_jax.curation import label_shards
from dashclip_jax.curation import query_writers as qw
from dashclip_jax.curation.labelers.gpt import query_writer
from dashclip_jax.curation.steps import context as context_lib
from dashclip_jax.curation.steps import label as label_step_lib
from dashclip_jax.curation.steps import teacher as teacher_step_lib
from dashclip_jax.data import sources
from dashclip_jax.runtime.config_files import ConfigError

log = logging.getLogger("dashclip_jax")

WRITERS = ("template", "llm")
MANIFEST = "generate.json"
SCHEMA = pa.schema([("query_id", pa.string()), ("query", pa.string()),
                    ("product_id", pa.string()), ("writer", pa.string())])
COUNTS = ("generated", "kept", "dropped_test_exact", "dropped_test_near",
          "dropped_duplicate", "dropped_empty", "dropped_words",
          "dropped_chars", "dropped_language")
NUM_EXAMPLES = 20


def settings(ctx: context_lib.Context) -> dict:
  """What decides the generated queries (generate.json)."""
  g = ctx.config.generate
  out = {"writer": g.writer, "seed": ctx.config.seed,
         "queries_per_product": g.queries_per_product,
         "max_products": g.max_products, "shard_size": g.shard_size,
         "filters": filters(ctx).__dict__, "catalog": ctx.catalog.name,
         "num_products": len(ctx.catalog), "known_queries": len(ctx.queries)}
  if g.writer == "template":
    out["synonym_rate"] = g.synonym_rate
  if g.writer == "llm":
    out["llm"] = g.llm.to_dict()
  return out


def filters(ctx: context_lib.Context) -> qw.Filters:
  g = ctx.config.generate
  return qw.Filters(min_words=g.min_words, max_words=g.max_words,
                    max_chars=g.max_chars,
                    min_ascii_letter_share=g.min_ascii_letter_share)


def product_rows(ctx: context_lib.Context) -> np.ndarray:
  """Sorted train catalog rows queries are written for: all, or a seeded
  sample of generate.max_products."""
  n, cap = len(ctx.catalog), ctx.config.generate.max_products
  if not cap or cap >= n:
    return np.arange(n, dtype=np.int64)
  rng = np.random.default_rng([ctx.config.seed, 3])  # 3: its own draw.
  return np.sort(rng.choice(n, cap, replace=False))


def seed_shots(ctx: context_lib.Context) -> list[tuple[str, str]]:
  """(product title, query) per seed query with a label-2 product (its
  first): the LLM writer's few-shot examples."""
  s = ctx.data.seed
  first = {}
  for q, p, l in zip(s.query.tolist(), s.product.tolist(), s.label.tolist()):
    if l == 2 and q not in first:  # Per pair, over the (small) seed.
      first[q] = p
  return [(ctx.catalog.titles[p], s.queries[q])
          for q, p in sorted(first.items())]


def make_writer(ctx: context_lib.Context
                ) -> Callable[[np.ndarray], list[list[str]]]:
  """-> a function: catalog rows (R,) -> per row its raw drafts."""
  g, seed = ctx.config.generate, ctx.config.seed
  per = g.queries_per_product
  if g.writer == "template":
    brands = qw.catalog_brands(ctx.catalog)
    return lambda rows: [qw.template_drafts(ctx.catalog, int(i), per, seed,
                                            brands, g.synonym_rate)
                         for i in rows]
  l = g.llm
  writer = query_writer.LlmWriter(
      l.gguf, shots=seed_shots(ctx), num_shots=l.num_shots,
      batch_size=l.batch_size, new_tokens=l.new_tokens,
      temperature=l.temperature, top_p=l.top_p,
      max_prompt_length=l.max_prompt_length, seed=seed, dtype=l.dtype)

  def write(rows):
    rows = np.asarray(rows, np.int64)
    titles = [ctx.catalog.titles[i] for i in np.repeat(rows, per).tolist()]
    numbers = (np.repeat(rows, per) * per + np.tile(np.arange(per),
                                                    len(rows))).tolist()
    flat = writer.drafts(titles, numbers)
    return [flat[j * per:(j + 1) * per] for j in range(len(rows))]
  return write


def test_queries(ctx: context_lib.Context) -> qw.TestQueries:
  """The data's test queries (qrels_test.csv for fashion)."""
  rel = sources.load_sources(ctx.config.data).test_relevance
  if rel is None:
    raise ConfigError(f"data source {ctx.config.data.source!r} has no test "
                      "queries to keep generated queries apart from")
  return qw.TestQueries(rel.queries)


def _read_shard(path: str) -> tuple[pa.Table, dict]:
  table = pq.read_table(path, schema=SCHEMA)
  counts = json.loads(pq.read_schema(path).metadata[b"counts"])
  return table, counts


def judge(drafts: list[list[str]], product_ids: list[str], writer: str,
          test: qw.TestQueries, flt: qw.Filters, seen: set[str]
          ) -> tuple[pa.Table, dict]:
  """Drafts of a shard's products -> (kept rows, counts by reason); `seen`
  (token keys of known and kept queries) grows by the kept ones."""
  counts = dict.fromkeys(COUNTS, 0)
  ids, texts, pids = [], [], []
  for pid, per_product in zip(product_ids, drafts):  # Per draft.
    for k, raw in enumerate(per_product):
      counts["generated"] += 1
      text = qw.clean(raw)
      reason = "empty" if not text else flt.reason(text)
      if reason is None:
        match = test.match(text)
        reason = f"test_{match}" if match else None
      if reason is None and qw.token_key(text) in seen:
        reason = "duplicate"
      if reason is not None:
        counts[f"dropped_{reason}"] += 1
        continue
      seen.add(qw.token_key(text))
      ids.append(f"gen-{writer}-{pid}-{k}")
      texts.append(text)
      pids.append(pid)
  counts["kept"] = len(ids)
  table = pa.table({"query_id": ids, "query": texts, "product_id": pids,
                    "writer": [writer] * len(ids)}, schema=SCHEMA)
  return table, counts


def generate_queries(ctx: context_lib.Context,
                     before_commit: Callable[[int, str], Any] | None = None
                     ) -> dict:
  """Writes the missing shards -> the report (counts, examples, paths).

  `before_commit(shard, tmp_path)` runs after a shard is written under its
  temporary name and before the rename (tests kill the job there).
  """
  g = ctx.config.generate
  if g.writer not in WRITERS:
    raise ConfigError(f"generate.writer={g.writer!r}: use one of {WRITERS}")
  if g.queries_per_product < 1 or g.shard_size < 1:
    raise ConfigError("generate.queries_per_product and generate.shard_size "
                      "must be >= 1")
  out_dir = ctx.path("generated")
  rows = product_rows(ctx)
  num_shards = max(1, -(-len(rows) // g.shard_size))
  label_shards.check_manifest(out_dir,
                              {**settings(ctx), "num_shards": num_shards},
                              name=MANIFEST, what="queries generated")
  paths = [os.path.join(out_dir, label_shards.shard_name(s, num_shards))
           for s in range(num_shards)]
  for tmp in glob.glob(os.path.join(out_dir, "*.tmp*")):
    if not tmp.endswith(MANIFEST + ".tmp"):
      os.remove(tmp)  # A killed job's half-written shard.
  # De-duplication state: the known queries, then each finished shard's.
  seen = {qw.token_key(q) for q in ctx.queries}
  done = 0
  while done < num_shards and os.path.isfile(paths[done]):
    seen.update(qw.token_key(q) for q in
                _read_shard(paths[done])[0]["query"].to_pylist())
    done += 1
  if done:
    log.info("generate: %d of %d shards already written, skipped", done,
             num_shards)
  if done < num_shards:
    write, test, flt = make_writer(ctx), test_queries(ctx), filters(ctx)
    bar = tqdm.tqdm(total=len(rows), initial=min(done * g.shard_size,
                                                 len(rows)),
                    unit="product", desc=f"generate ({g.writer})",
                    disable=not g.progress, mininterval=2.0)
    tick, made = time.time(), 0
    try:
      for s in range(done, num_shards):
        chunk = rows[s * g.shard_size:(s + 1) * g.shard_size]
        pids = [ctx.catalog.ids[i] for i in chunk.tolist()]
        table, counts = judge(write(chunk), pids, g.writer, test, flt, seen)
        table = table.replace_schema_metadata(
            {"counts": json.dumps(counts)})
        tmp = f"{paths[s]}.tmp{os.getpid()}"
        pq.write_table(table, tmp)
        if before_commit is not None:
          before_commit(s, tmp)
        os.replace(tmp, paths[s])
        made += counts["generated"]
        bar.update(len(chunk))
        rate = made / max(time.time() - tick, 1e-9)
        bar.set_postfix(queries_per_s=f"{rate:.2f}")
        log.info("generate: shard %d/%d, %d of %d drafts kept; %.2f "
                 "queries/s", s + 1, num_shards, counts["kept"],
                 counts["generated"], rate)
    finally:
      bar.close()
  return report(out_dir, paths)


def report(out_dir: str, paths: list[str]) -> dict:
  """Counts summed over the shards, kept share and NUM_EXAMPLES examples
  (spread evenly over the kept queries)."""
  tables, counts = [], dict.fromkeys(COUNTS, 0)
  for p in paths:
    table, c = _read_shard(p)
    tables.append(table)
    for k in COUNTS:
      counts[k] += c[k]
  table = pa.concat_tables(tables)
  pick = np.unique(np.linspace(0, len(table) - 1, NUM_EXAMPLES).astype(
      np.int64)) if len(table) else np.zeros(0, np.int64)
  examples = [f"{table['query'][i]} (product {table['product_id'][i]})"
              for i in pick.tolist()]
  dropped_test = counts["dropped_test_exact"] + counts["dropped_test_near"]
  dropped_filters = sum(counts[f"dropped_{r}"] for r in
                        ("empty", "words", "chars", "language"))
  return {**counts, "dropped_test": dropped_test,
          "dropped_filters": dropped_filters,
          "kept_share": counts["kept"] / max(counts["generated"], 1),
          "examples": examples, "dir": out_dir, "shards": len(paths)}


def shard_paths(ctx: context_lib.Context) -> list[str]:
  """The finished step's shard paths, from its manifest."""
  path = os.path.join(ctx.path("generated"), MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: run the generate step "
                            "first (config.run), or set generate.writer=''")
  with open(path) as f:
    num = json.load(f)["num_shards"]
  return [ctx.path("generated", label_shards.shard_name(s, num))
          for s in range(num)]


def generated(ctx: context_lib.Context) -> pa.Table | None:
  """The finished generate step's rows; None when generate.writer is ""."""
  if not ctx.config.generate.writer:
    return None
  paths = shard_paths(ctx)
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f"{len(missing)} generated shards not written "
                            f"yet, e.g. {missing[0]}: rerun the generate step")
  return pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in paths])


def add_generated(ctx: context_lib.Context) -> int:
  """Appends the generated queries to ctx's unlabelled queries (after the
  split's own), so mine, label, negatives and expand treat them as any
  unlabelled query -> how many."""
  table = generated(ctx)
  if table is None:
    return 0
  ctx.query_ids = ctx.query_ids + table["query_id"].to_pylist()
  ctx.queries = ctx.queries + table["query"].to_pylist()
  log.info("generate: %d generated queries join the %d unlabelled ones",
           len(table), len(ctx.queries) - ctx.num_seed_queries - len(table))
  return len(table)


def kept_by_teacher(ctx: context_lib.Context) -> dict:
  """After label: of the generated queries' labelled candidates, the share
  the threshold keeps, and the share of generated queries left with a
  confident label-2 product (the teacher's verdict on the writer)."""
  table = generated(ctx)
  threshold = teacher_step_lib.calibration(ctx)["threshold"]["value"]
  labels = label_step_lib.labels(ctx, "labels")
  ids = (table["query_id"].combine_chunks() if table is not None
         else pa.array([], pa.string()))
  mine = labels.filter(pc.is_in(labels["query_id"], value_set=ids))
  kept = label_shards.confident(mine, threshold)
  positive = kept.filter(pa.array(kept["label"].to_numpy() == 2))
  return {"queries": len(ids), "pairs": len(mine), "pairs_kept": len(kept),
          "pairs_kept_share": len(kept) / max(len(mine), 1),
          "queries_with_label2": len(pc.unique(positive["query_id"])),
          "threshold": threshold}


def summary(ctx: context_lib.Context) -> dict | None:
  """For the report: the finished generate step's counts and examples, and
  (once the label step has run) what the teacher kept; None when
  generate.writer is ""."""
  table = generated(ctx)  # Raises when the step has not finished.
  if table is None:
    return None
  out = report(ctx.path("generated"), shard_paths(ctx))
  if os.path.isdir(ctx.path("labels")):
    out["teacher"] = kept_by_teacher(ctx)
  return out


def generate_step(ctx: context_lib.Context) -> dict:
  if not ctx.config.generate.writer:
    log.info("generate: generate.writer is empty, no queries written")
    return {"generated": 0, "kept": 0}
  out = {}
  if jax.process_index() == 0:
    out = generate_queries(ctx)
    log.info("generate: %d drafts, %d kept (%.1f%%); dropped: %d as test "
             "queries (%d exact, %d near), %d by filters, %d duplicates",
             out["generated"], out["kept"], 100 * out["kept_share"],
             out["dropped_test"], out["dropped_test_exact"],
             out["dropped_test_near"], out["dropped_filters"],
             out["dropped_duplicate"])
  context_lib.sync("generated")
  add_generated(ctx)
  return out
