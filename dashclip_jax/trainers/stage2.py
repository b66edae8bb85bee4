"""Stage 2: align the query encoder with the multimodal product embedding (QCC).

Reads top to bottom: mesh -> init weights (a stage-1 workdir/model or a
converted BLIP checkpoint) -> optimizer (what is frozen: `optim.lr_mults`)
and state born sharded -> data (with a frozen product tower, its features
computed once as a table) -> resume -> jitted step -> loop (log, eval,
checkpoint) -> exported model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import grain.python as grain
import jax
import ml_collections
import numpy as np

from dashclip_jax import model as model_lib
from dashclip_jax.data import train_datasets
from dashclip_jax.evaluation import metrics as eval_metrics
from dashclip_jax.evaluation import qrels as qrels_lib
from dashclip_jax.runtime import config_files
from dashclip_jax.train import metric_writer
from dashclip_jax.train import optim
from dashclip_jax.train import sharding as shard_lib
from dashclip_jax.train import step_config
from dashclip_jax.train import steps as train_steps
from dashclip_jax.trainers import embed_batches
from dashclip_jax.trainers import eval_inputs
from dashclip_jax.trainers import export
from dashclip_jax.trainers import init_checkpoint
from dashclip_jax.trainers import inputs
from dashclip_jax.trainers import loop
from dashclip_jax.trainers import nonfinite
from dashclip_jax.trainers import preemption
from dashclip_jax.trainers import resume
from dashclip_jax.trainers import step_options
from dashclip_jax.trainers import wise_ft

log = logging.getLogger("dashclip_jax")

# The held-out figures (evaluation/metrics.py); `checkpoint.best_metric`
# names one of them, "eval/ndcg@10".
EVAL_METRICS = ("ndcg@10", "recall@1", "mrr")


def make_eval_fns(model_config: model_lib.ModelConfig, mesh):
  """-> jitted (product embed, query embed, project features).

  The first two map a global batch -> (emb, id, valid), replicated so every
  process can read them whole; the third maps cached product features
  (the frozen tower's table rows) -> product embeddings.
  """
  module = model_lib.DashClip(model_config)
  rep = shard_lib.replicated(mesh)

  def embed_products(params, batch):
    emb = module.apply({"params": params}, batch["image"],
                       batch["title_ids"], batch["title_mask"],
                       method=model_lib.DashClip.encode_product)[0]
    return emb, batch["product_id"], batch["valid"]

  def embed_queries(params, batch):
    emb = module.apply({"params": params}, batch["query_ids"],
                       batch["query_mask"],
                       method=model_lib.DashClip.encode_query)[0]
    return emb, batch["query_index"], batch["valid"]

  def project(params, features):
    return module.apply({"params": params}, features,
                        method=model_lib.DashClip.project_product)
  return (jax.jit(embed_products, out_shardings=rep),
          jax.jit(embed_queries, out_shardings=rep), jax.jit(project))


def _features_fn(model_config: model_lib.ModelConfig, mesh):
  """jitted (params, batch) -> (frozen tower's pooled features, id, valid),
  replicated."""
  module = model_lib.DashClip(model_config)

  def features(params, batch):
    out, _ = module.apply({"params": params}, batch["image"],
                          batch["title_ids"], batch["title_mask"],
                          method=model_lib.DashClip.product_features)
    return out, batch["product_id"], batch["valid"]
  return jax.jit(features, out_shardings=shard_lib.replicated(mesh))


def _feature_rows(fn, params, batches, n: int, threads: int, mesh
                  ) -> tuple[np.ndarray, np.ndarray]:
  """-> (features float32 (n, D), ok bool (n,)) of products 0..n-1 of the
  eval-transform `batches` (a grain MapDataset)."""
  # Decoding and resizing dominate (about 1 ms a product on one core, the
  # jitted forward a fraction of it): read batches on threads, in order.
  batches = batches.to_iter_dataset(grain.ReadOptions(
      num_threads=threads, prefetch_buffer_size=2 * threads))
  feats, ids = embed_batches.embed_all(fn, params, batches, mesh)
  table = np.zeros((n, feats.shape[1]), np.float32)
  ok = np.zeros((n,), bool)
  table[ids], ok[ids] = feats, True
  return table, ok


def product_feature_table(config: ml_collections.ConfigDict,
                          model_config: model_lib.ModelConfig, params, mesh
                          ) -> tuple[np.ndarray, np.ndarray]:
  """-> (features float32 (P, D), ok bool (P,)) of every train product.

  The frozen tower's pooled states (eval mode, eval transform), the same
  on every process: a stage-2 step then runs only the query tower and
  `product_proj`. Products whose image fails are not ok (their pairs skip).
  """
  t0 = time.time()
  n, batches = inputs.train_products(config.data, model_config,
                                     config.train.table_batch_size)
  table, ok = _feature_rows(_features_fn(model_config, mesh), params,
                            batches, n, _read_threads(config), mesh)
  log.info("stage 2: product feature table %s of %d products (%d without "
           "image) in %.1f s", table.shape, n, n - int(ok.sum()),
           time.time() - t0)
  return table, ok


def eval_feature_rows(config: ml_collections.ConfigDict,
                      model_config: model_lib.ModelConfig, params, mesh,
                      data: eval_inputs.Stage2Eval
                      ) -> tuple[np.ndarray, np.ndarray]:
  """A frozen tower's features of the held-out products, (P, D) and ok (P,)
  in `data.product_rows` order: computed once, each evaluation then only
  projects them (as from the whole table, when there is none)."""
  t0 = time.time()
  rows = _feature_rows(_features_fn(model_config, mesh), params,
                       data.product_batches, len(data.product_rows),
                       _read_threads(config), mesh)
  log.info("stage 2: held-out product features of %d products in %.1f s",
           len(data.product_rows), time.time() - t0)
  return rows


def _read_threads(config: ml_collections.ConfigDict) -> int:
  # In this process, no grain workers: the train pipeline's thread rule.
  return train_datasets.default_read_threads(0, config.data.read_threads)


def use_feature_table(setting: str | bool, num_products: int,
                      product_forwards: int) -> bool:
  """Whether a frozen tower's features come from a table built up front.

  The table costs one forward per train product; without it every step
  runs the frozen tower on its batch's products (eval mode and transform:
  the same values). "auto" builds the table only when the run's product
  forwards (`product_forwards`: steps x batch) outnumber the products, so a
  few steps on a 400K-product catalog do not wait for 400K forwards first.
  """
  choice = str(setting).lower()
  if choice in ("always", "true"):
    return True
  if choice in ("never", "false"):
    return False
  if choice != "auto":
    raise config_files.ConfigError(
        f"train.cache_product_features={setting!r}: use 'auto', 'always' "
        "or 'never'")
  return product_forwards >= num_products


def evaluate(fns, params, data: eval_inputs.Stage2Eval | None, mesh,
             features: tuple[np.ndarray, np.ndarray] | None = None
             ) -> dict[str, float]:
  """Held-out queries ranking their judged train products (EVAL_METRICS of
  evaluation/metrics.py: graded NDCG@10, recall@1, MRR). With a frozen
  tower's `features` of `data.product_rows` ((P, D), ok (P,)), product
  embeddings are those rows projected, exactly what the forward would give.

  Products whose image cannot be read are skipped (not ranked), and so are
  queries left without a readable label-2 product; the metrics count them
  (eval/products_ranked, eval/products_skipped, eval/queries_ranked) and a
  warning names them.
  """
  if data is None:
    return {}
  embed_products, embed_queries, project = fns
  n = len(data.product_rows)
  if features is not None:
    rows, ok = features
    products = np.array(project(params, rows))
  else:
    emb, cols = embed_batches.embed_all(embed_products, params,
                                        data.product_batches, mesh)
    products = np.zeros((n, emb.shape[1]), np.float32)
    products[cols] = emb
    ok = np.zeros((n,), bool)
    ok[cols] = True  # The rest: their image failed (valid=0).
  queries, q_index = embed_batches.embed_all(embed_queries, params,
                                             data.query_batches, mesh)
  labels = data.labels.take_queries(q_index).take_products(ok)
  ranked = labels.has_relevant()  # Metrics need a readable label 2.
  _report_skips(data, ok, [data.query_ids[i] for i in q_index[~ranked]])
  counts = {"eval/products_ranked": float(ok.sum()),
            "eval/products_skipped": float(n - ok.sum()),
            "eval/queries_ranked": float(ranked.sum())}
  if not ranked.any():
    return {f"eval/{k}": float("nan") for k in EVAL_METRICS} | counts
  labels = labels.take_queries(ranked)
  # Each query ranks its judged products only (the rest at -inf).
  scores = _pair_scores(queries[ranked], products[ok], labels)
  m = eval_metrics.metrics_at_positions(
      labels, eval_metrics.judged_positions(labels, scores),
      [data.query_ids[i] for i in q_index[ranked]])
  return {f"eval/{k}": float(m[k].mean()) for k in EVAL_METRICS} | counts


def _pair_scores(queries: np.ndarray, products: np.ndarray,
                 labels: qrels_lib.SparseQrels, chunk: int = 1 << 16
                 ) -> np.ndarray:
  """float32 (M,): queries[q] . products[p] for each judged pair (q, p) of
  `labels`, in chunks of pairs (memory O(chunk * E), never (Q, P))."""
  q, p = labels.query_of_pair(), labels.product
  out = np.empty(q.shape, np.float32)
  for s in range(0, len(q), chunk):
    out[s:s + chunk] = np.einsum("me,me->m", queries[q[s:s + chunk]],
                                 products[p[s:s + chunk]])
  return out


def _report_skips(data: eval_inputs.Stage2Eval, ok: np.ndarray,
                  queries: list[str]) -> None:
  """Warns (once per distinct set) which products and queries were skipped."""
  skipped = np.flatnonzero(~ok)
  key = (tuple(skipped.tolist()), tuple(queries))
  if not skipped.size or key == data.reported_skips:
    return
  data.reported_skips = key
  names = data.product_names or [f"train catalog row {r}"
                                 for r in data.product_rows]
  first = lambda xs: ", ".join(xs[:5]) + (" ..." if len(xs) > 5 else "")
  log.warning("held-out eval: ranking %d of %d products, %d skipped (image "
              "unreadable): %s; %d queries skipped (no readable label-2 "
              "product)%s", ok.sum(), len(ok), skipped.size,
              first([names[j] for j in skipped]), len(queries),
              f": {first(queries)}" if queries else "")


def train(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains stage 2 in `workdir`; returns the exported model directory."""
  preemption.install_sigterm_handler()
  os.makedirs(workdir, exist_ok=True)
  tc = config.train

  # --- Mesh and init weights: stage 1's model or a converted BLIP. --------
  mesh, init_dir, model_config, init_params = init_checkpoint.mesh_and_init(
      config, "stage 2")
  if config.wise_ft.alphas:
    try:
      wise_ft.check_config(config.wise_ft, config.eval.get("paraphrases"),
                           has_start=init_params is not None)
    except ValueError as e:
      raise config_files.ConfigError(str(e)) from None
  if init_dir and config.init.query_from_text:
    # DashCLIP: the query tower starts as a copy of the text encoder.
    init_params = init_checkpoint.copy_text_to_query(init_params,
                                                     model_config)

  # --- Optimizer and state. What trains is `optim.lr_mults` alone: the -----
  # product tower body is trained iff some param of it has a non-zero mult.
  if "train_product_tower" in config.loss:
    raise config_files.ConfigError(
        "loss.train_product_tower is gone: set optim.lr_mults (e.g. "
        "[('(vision_proj|text_proj|itm_head)/.*', 0.0), ('.*', 1.0)] trains "
        "the whole product tower)")
  optim_cfg = step_options.optim_config(config.optim, tc.total_steps)
  step_cfg = dataclasses.replace(
      step_options.step_config(config.loss, tc.accum_steps),
      train_product_tower=optim.trains_any(
          model_lib.abstract_params(model_config), optim_cfg.lr_mults,
          step_config.PRODUCT_TOWER_BODY_REGEX))
  log.info("stage 2 trains: %s", ", ".join(optim.trained_modules(
      model_lib.abstract_params(model_config), optim_cfg.lr_mults)))
  tx, state = step_options.make_state(model_config, step_cfg, optim_cfg,
                                      config.seed, mesh, init_params)

  # --- Data. A frozen tower's features come from a table built once. ------
  table = None
  if not step_cfg.train_product_tower:
    num_products = len(inputs.load_sources(config.data).train_catalog)
    forwards = tc.total_steps * tc.batch_size
    if use_feature_table(tc.cache_product_features, num_products, forwards):
      table = product_feature_table(config, model_config, state.params, mesh)
    else:
      log.info("stage 2: frozen product tower run per batch (%d product "
               "forwards in %d steps, fewer than a table of %d products; "
               "train.cache_product_features=%s)", forwards, tc.total_steps,
               num_products, tc.cache_product_features)
  train_iter = inputs.stage2_train(
      config.data, model_config, tc.batch_size, seed=config.seed,
      frozen_tower=not step_cfg.train_product_tower, product_table=table)
  eval_data = eval_inputs.stage2_eval(config.data, model_config,
                                      config.eval.batch_size)

  # --- Resume: own workdir, else the init checkpoint (above), else fresh. ---
  init_name = init_checkpoint.init_name(config, init_dir)
  ckpts = resume.open_checkpoints(config, workdir)
  state, resumed = resume.restore(ckpts, state, train_iter)
  if not resumed:
    log.info("initialised from %s", init_name)

  # --- The step (compiled once, explicit shardings, state donated), loop. --
  step_fn = nonfinite.guard_nonfinite(
      train_steps.make_stage2_step(model_config, step_cfg, tx, mesh))
  eval_fns = make_eval_fns(model_config, mesh)
  writer = metric_writer.MetricWriter(workdir, tc.total_steps)
  frozen_eval = None  # A frozen tower's held-out product features.
  if eval_data is not None and not step_cfg.train_product_tower:
    frozen_eval = ((table[0][eval_data.product_rows],
                    table[1][eval_data.product_rows]) if table is not None
                   else eval_feature_rows(config, model_config, state.params,
                                          mesh, eval_data))
  paraphrase_data = None
  if config.eval.get("paraphrases"):
    # Hand- and rule-written rewordings over train products, reported as
    # para/* beside the held-out metrics; model selection stays on eval/*.
    paraphrase_data = eval_inputs.paraphrase_stage2_eval(
        config.data, model_config, config.eval.batch_size)

  def evaluate_now(params) -> dict[str, float]:
    out = evaluate(eval_fns, params, eval_data, mesh, frozen_eval)
    if paraphrase_data is not None:
      para = evaluate(eval_fns, params, paraphrase_data, mesh)
      out |= {"para/" + k[len("eval/"):]: v for k, v in para.items()}
    return out
  if not resumed:
    before = evaluate_now(state.params)
    log.info("before stage 2: %s", before)
    writer.write(0, before)
    resume.check_best_metric(config.checkpoint.best_metric, before)
  state = loop.train_loop(
      config, "stage 2", state, train_iter=train_iter, step_fn=step_fn,
      mesh=mesh, evaluate=evaluate_now, ckpts=ckpts, writer=writer,
      lr_at=optim.schedule(optim_cfg))
  params = state.params
  if config.wise_ft.alphas:
    # Weight-space ensemble with the start, chosen on held-out train queries.
    params, _ = wise_ft.choose_for_stage2(config.wise_ft, state.params,
                                          init_params, evaluate_now, workdir)
  return export.export_model(workdir, tc.total_steps, params,
                             model_config,
                             provenance=dict(stage="stage2", workdir=workdir,
                                             init=init_name))
