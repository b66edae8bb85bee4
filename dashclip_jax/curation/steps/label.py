"""The label step: the teacher labels the candidates, sharded and resumable
(`curation.label_shards`), into labels/part-*.parquet."""

from __future__ import annotations

import json
import os

import pyarrow as pa

from dashclip_jax.curation import label_shards
from dashclip_jax.curation.steps import context as context_lib


def label_table(ctx: context_lib.Context, table: pa.Table,
                out_dir: str) -> list[str]:
  """Labels a pair table's rows into `out_dir`'s shards -> their paths."""
  lc = ctx.config.label
  return label_shards.label_pairs(
      context_lib.load_teacher(ctx), ctx.catalog,
      table["query_id"].to_pylist(), table["query"].to_pylist(),
      table["product_index"].to_numpy(), out_dir, shard_size=lc.shard_size,
      batch_size=lc.batch_size, progress=lc.progress)


def label_step(ctx: context_lib.Context) -> dict:
  table = context_lib.read_table(ctx.path("candidates.parquet"), "mine")
  paths = label_table(ctx, table, ctx.path("labels"))
  context_lib.sync("labels")
  return {"shards": len(paths), "dir": ctx.path("labels")}


def labels(ctx: context_lib.Context, name: str) -> pa.Table:
  """Every shard a finished labelling wrote to `<workdir>/<name>`."""
  path = os.path.join(ctx.path(name), label_shards.MANIFEST)
  if not os.path.isfile(path):
    step = "label" if name == "labels" else name
    raise FileNotFoundError(f"{path} not found: run the {step} step first "
                            "(config.run)")
  with open(path) as f:
    num = json.load(f)["num_shards"]
  return label_shards.read_shards([
      os.path.join(ctx.path(name), label_shards.shard_name(s, num))
      for s in range(num)])
