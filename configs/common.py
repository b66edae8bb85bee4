"""What the experiment configs share: the variants, the stage configs'
common blocks and the data block every job reads.

configs/*.py load it by path (`config_files.sibling_config(__file__,
"common")`), so it works wherever configs/ is and whatever the cwd.
"""

from __future__ import annotations

import ml_collections

from dashclip_jax.runtime import config_files


VARIANTS = ("tiny", "demo", "fashion", "base")


def by_variant(variant: str, *, tiny, demo, fashion, base):
  """The value of `variant` among the named variants (keywords only, so
  every call reads as a small table)."""
  return {"tiny": tiny, "demo": demo, "fashion": fashion, "base": base}[
      variant]


def stage_config(stage: str, arg: str | None
                 ) -> tuple[ml_collections.ConfigDict, str]:
  """-> (config, variant): what every stage config starts with (stage, seed,
  mesh, model, train, optim, eval and checkpoint blocks sized by the variant
  of `arg`). The caller sets the variant's steps, learning rate and the rest.
  """
  v = config_files.parse_arg(arg, variant="base").variant
  if v not in VARIANTS:
    raise ValueError(f"unknown {stage} variant {v!r}: "
                     f"{', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.seed = 0
  c.mesh = mesh_config()
  c.model = model_block(by_variant(
      v, tiny="tiny", demo="small", fashion="small", base="base"))
  # 64 px: the demo's images; the fashion run's budget (its photos are 128).
  c.model.image_size = by_variant(v, tiny=0, demo=64, fashion=64, base=0)
  c.train = train_block(
      batch_size=by_variant(v, tiny=8, demo=32, fashion=32, base=256),
      total_steps=0)
  c.train.fast_compile = v == "tiny"
  c.train.log_every = by_variant(v, tiny=2, demo=20, fashion=50, base=50)
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-5, init_lr=0.0, end_lr=0.0,
      warmup_steps=by_variant(v, tiny=1, demo=10, fashion=10, base=0),
      weight_decay=0.05, clip_norm=1.0,
      # "regex=mult; ...", first match wins, 0 freezes: "img/.*=0.1; .*=1".
      lr_mults=".*=1",
  ))
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=by_variant(v, tiny=16, demo=64, fashion=64, base=64)))
  c.checkpoint = checkpoint_block()
  return c, v


def mesh_config() -> list[tuple[str, int]]:
  # All devices on the data axis; fsdp/tensor are opt-in per experiment.
  return [("data", -1), ("fsdp", 1), ("tensor", 1)]


def model_block(size: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      size=size,           # dashclip_jax.model.model_config size.
      dtype="float32",     # Compute dtype; "bfloat16" on accelerators.
      remat=False,
      attention="einsum",  # "cudnn": fused ViT attention (model/attention.py).
      scan_layers=False,   # True: compile each tower's layers once (scan).
      image_size=0,        # 0: the size's own.
      text_dropout=-1.0,   # < 0: the size's own.
  ))


def checkpoint_block() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      every_steps=50, keep=2, async_save=True,
      best_metric="eval/hit@1",  # Kept besides `keep`; stage 2: ndcg@10.
  ))


def train_block(batch_size: int, total_steps: int
                ) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      batch_size=batch_size,  # Global batch.
      total_steps=total_steps,
      accum_steps=1,          # GradCache microbatches per step.
      log_every=10,
      eval_every=100,
      nan_policy="stop",      # "stop" or "skip" (skip the update, count it).
      fast_compile=False,     # XLA opt level 0 for the step (CI-scale runs).
  ))


def data_block(variant: str) -> ml_collections.ConfigDict:
  """config.data of every job: what to read (dashclip_jax.data.sources),
  which split evaluation ranks and ranking simulates, and how the trainers
  read it (trainers/inputs.py -> data.train_datasets / eval_datasets).

  Training, evaluation, curation and ranking all read this one block, so
  `--config.data.path=...` (or source, catalog_path, ...) moves each job.
  """
  v = variant
  embedded = v in ("tiny", "demo")
  return ml_collections.ConfigDict(dict(
      # Source: synthetic (embedded, no files), fashion (`path`: styles.csv +
      # images/ + relevance_train.csv + qrels_test.csv), table
      # (`catalog_path`: a CSV/Parquet catalog, relevance_*_path) or tfds
      # (`tfds_dir`).
      source="synthetic" if embedded else "fashion",
      path="../shared/data/fashion",
      catalog_path="",
      # query_id, query, product_id, label tables (a folder: its
      # relevance_train.csv / qrels_test.csv); for fashion they replace the
      # folder's own. The test relevance is what evaluation scores.
      relevance_train_path="",
      relevance_test_path="",
      tfds_dir="",
      synthetic=dict(
          num_products=by_variant(v, tiny=96, demo=400, fashion=400, base=400),
          num_train_queries=by_variant(v, tiny=24, demo=160, fashion=160,
                                       base=160),
          num_test_queries=by_variant(v, tiny=12, demo=60, fashion=60, base=60),
          image_size=64, test_fraction=0.2, seed=0,
          bad_images=0),  # >0: damage that many images (bad-data drills).
      # Above this fraction of bad records the run stops (BadDataError):
      # catalog/relevance rows at load, undecodable images in training once
      # min_seen_for_bad_fraction images were seen (counts are logged at
      # log steps either way).
      max_bad_fraction=0.01,
      # The test relevance's own limit (< 0: max_bad_fraction); the
      # evaluation job sets 0: a skipped row changes what it measures.
      relevance_test_max_bad_fraction=-1.0,
      min_seen_for_bad_fraction=50,
      test_fraction=0.1,      # Hash split where the catalog has no split.
      # The products evaluation ranks and ranking simulates, judged by that
      # split's relevance: test, train, or all (judged by the test's).
      split="test",
      probe_split="train",      # Evaluation's aisle probe trains on this
      max_probe_products=2000,  # split, at most this many (encoding cost).
      # Pipelines.
      num_shards=0,           # 0: one per process (see trainers/inputs.py).
      workers=0,              # grain worker processes (0: threads).
      worker_buffer_size=2,   # Examples buffered per worker.
      # Threads per process running the per-example transform; 0: min(cores,
      # 8) without workers, 1 per worker with them.
      read_threads=0,
      image_size=0,           # 0: the model's image size.
      # Images over this many pixels (read from the header) are bad images:
      # skipped, counted and named, never decoded (<= 0: no limit).
      max_image_pixels=50_000_000,
      text_max_length=by_variant(v, tiny=16, demo=24, fashion=24, base=30),
      query_max_length=by_variant(v, tiny=12, demo=16, fashion=16, base=20),
      min_scale=0.5,          # RandomResizedCrop (BLIP: 0.2 pretrain, 0.5 ft).
      augment=v != "tiny",
      num_negatives=by_variant(v, tiny=2, demo=4, fashion=4, base=8),
      # Stage 2: room for a query's relevant products, which are never its
      # in-batch negatives; a query with more stops the run (not truncated).
      max_relevant=256,
      label1_policy="weighted",  # Stage 2: positive | weighted | exclude.
      label1_weight=0.5,
      # Stage 2: each training query is reworded on the fly by the synonym
      # table (data/query_rewrite.py: "men" -> "gents", "tshirts" -> "tees"),
      # each matched word replaced with this probability; 0: as written.
      # On the fashion catalog 0.5 lifts the train-side paraphrase sets
      # (0.77 -> 0.86-0.92 NDCG@10) at no cost on qrels_test.csv
      # (docs/curation.md); the synthetic queries stay as written.
      query_rewrite_rate=by_variant(v, tiny=0.0, demo=0.0, fashion=0.5,
                                    base=0.5),
      # Stage 2: this share of the train queries (by a hash of the text)
      # never trains; the run selects its model on them, not on the test set.
      heldout_query_fraction=0.1,
      # At most this many of them are evaluated (0: all): those with the
      # lowest text hash, the same on every machine. 2,000 queries pin
      # NDCG@10 to about +-0.01; at 640K queries the held-out tenth would
      # cost more per evaluation than the training between two of them.
      heldout_eval_queries=2000,
      # 0: all test products.
      eval_max_products=by_variant(v, tiny=16, demo=0, fashion=0, base=0),
  ))


