"""The expand step: seed + kept teacher rows + mined label-0 rows -> the
expanded set, with the manifest that records where every part came from.

Each set is a directory stage 2 reads by `data.relevance_train_path=DIR`
(its relevance_train.csv), beside rows.parquet and manifest.json.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import ml_collections
import pyarrow.parquet as pq

from dashclip_jax.curation import label_shards
from dashclip_jax.curation import seed as seed_lib
from dashclip_jax.curation.labelers.cross_encoder import model as teacher_lib
from dashclip_jax.curation.steps import context as context_lib
from dashclip_jax.curation.steps import label as label_step_lib
from dashclip_jax.curation.steps import mine as mine_step_lib
from dashclip_jax.curation.steps import teacher as teacher_step_lib

log = logging.getLogger("dashclip_jax")


def manifest(ctx: context_lib.Context) -> dict:
  """The seed's hash, the teacher, the threshold, the candidate and
  negative settings: what an expanded set was made from."""
  sd, t = ctx.config.seed_data, ctx.config.teacher
  teacher_meta = {}
  meta_path = os.path.join(ctx.teacher_dir, teacher_lib.CONFIG_FILE)
  if os.path.isfile(meta_path):
    with open(meta_path) as f:
      teacher_meta = json.load(f)
  calibration = (teacher_step_lib.calibration(ctx) if os.path.isfile(
      ctx.path("calibration.json")) else {})
  out = {
      "seed": {
          "sha256": seed_lib.digest(ctx.data.seed, ctx.catalog),
          "pairs": len(ctx.data.seed), "queries": ctx.data.seed.num_queries,
          "source": (f"{sd.path}" if sd.path else
                     f"split of {ctx.data.seed.name.split(' [')[0]}: "
                     f"{sd.fraction} of the queries"),
          "bad": ctx.data.bad},
      "teacher": {
          "dir": os.path.abspath(ctx.teacher_dir),
          "teacher_id": teacher_meta.get("teacher_id", ""),
          "params_sha256": teacher_meta.get("params_sha256", ""),
          "kind": t.kind, "fields": list(ctx.fields),
          "init": teacher_meta.get("provenance", {}).get("init", t.init),
          "params_file": os.path.join(os.path.abspath(ctx.teacher_dir),
                                      teacher_lib.PARAMS_FILE)},
      "threshold": calibration.get("threshold", {}).get("value"),
      "threshold_chosen_by": calibration.get("threshold", {}).get(
          "chosen_by"),
  }
  if os.path.isfile(ctx.path("candidates.parquet")):
    m = ctx.config.mining
    out["candidates"] = {
        "model": mine_step_lib.mining_model(ctx),
        "k": m.k, "num_random": m.num_random, "seed": ctx.config.seed,
        "max_queries": m.max_queries, "search": m.search,
        **({"faiss_index": m.faiss_index} if m.search == "faiss" else {}),
        "pairs": pq.read_metadata(ctx.path("candidates.parquet")).num_rows}
  neg = ctx.path("negatives", "candidates.parquet")
  if os.path.isfile(neg):
    out["negatives"] = {"k": ctx.config.negatives.k,
                        "max_products": ctx.config.negatives.max_products,
                        "pairs": pq.read_metadata(neg).num_rows}
  return out


def expand_step(ctx: context_lib.Context) -> dict:
  """Writes the expanded set and, for stage 2's comparisons, the same
  without the mined negatives and the seed alone (each a directory with
  relevance_train.csv, rows.parquet and manifest.json)."""
  threshold = teacher_step_lib.calibration(ctx)["threshold"]["value"]
  seed = label_shards.seed_rows(ctx.data.seed, ctx.catalog)
  teacher = label_shards.confident(label_step_lib.labels(ctx, "labels"),
                                   threshold)
  policy = {}
  if ctx.config.label.aisle_field:
    field = ctx.config.label.aisle_field
    teacher, demoted = label_shards.aisle_consistent(
        teacher, label_shards.product_aisles(ctx.catalog, field))
    policy = {"aisle_policy": {"field": field, "relabelled_0": demoted}}
    log.info("aisle policy (%s): %d teacher rows outside their query's "
             "label-2 aisles relabelled 0", field, demoted)
  negatives = []
  if os.path.isfile(os.path.join(ctx.path("negatives"), label_shards.MANIFEST)):
    negatives = [label_shards.confident(label_step_lib.labels(ctx, "negatives"),
                                        threshold, label=0)]
  out, shared = {}, {**manifest(ctx), **policy}
  for name, parts in (("expanded", [seed, teacher] + negatives),
                      ("expanded_no_negatives", [seed, teacher]),
                      ("seed_only", [seed])):
    table = label_shards.expanded(parts)
    counts = table.group_by(["label_source", "label"]).aggregate(
        [([], "count_all")]).to_pydict()  # Per (source, label), not row.
    by = {f"{s}/{l}": n for s, l, n in sorted(zip(
        counts["label_source"], counts["label"], counts["count_all"]))}
    if jax.process_index() == 0:
      label_shards.write_expanded(table, ctx.path(name), {
          **shared, "set": name, "rows": len(table), "by_source_label": by})
    out[name] = {"path": ctx.path(name, label_shards.CSV_NAME),
                 "rows": len(table), "by_source_label": by}
    log.info("%s: %s, %d rows (%s)", name, out[name]["path"], len(table), by)
  context_lib.sync("expanded")
  return {**out["expanded"], "sets": out}


def stage2_command(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The stage-2 run on the expanded set, for fashion data ("" for other
  sources: their stage-2 config names its own data)."""
  if config.data.source != "fashion":
    return ""
  path = os.path.join(workdir, "expanded")
  data_path = f" --config.data.path={config.data.path}"
  return ("stage 2 on the expanded set (S1: a stage-1 workdir or model):\n"
          "  python -m dashclip_jax.main --config=configs/stage2.py:fashion "
          f"--config.init.checkpoint=S1{data_path} "
          f"--config.data.relevance_train_path={path} "
          "--workdir=/tmp/s2_expanded")
