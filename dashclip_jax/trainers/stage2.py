"""Stage 2: align the query encoder with the multimodal product embedding (QCC).

Reads top to bottom: mesh -> init weights (a stage-1 workdir/model or a
converted BLIP checkpoint) -> data -> optimizer (product tower frozen unless
configured) and state born sharded -> resume -> jitted step -> loop (log,
eval, checkpoint) -> exported model.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
import numpy as np

from dashclip_jax import metric_writer
from dashclip_jax import model as model_lib
from dashclip_jax import optim
from dashclip_jax import sharding as shard_lib
from dashclip_jax import train_steps
from dashclip_jax.trainers import common
from dashclip_jax.trainers import inputs

log = logging.getLogger("dashclip_jax")


def make_eval_fns(model_config: model_lib.ModelConfig, mesh):
  """-> jitted (product embed, query embed): global batch -> (emb, id, valid).

  Outputs are replicated, so every process can read them whole.
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
  return (jax.jit(embed_products, out_shardings=rep),
          jax.jit(embed_queries, out_shardings=rep))


def evaluate(fns, params, data: inputs.Stage2Eval, mesh) -> dict[str, float]:
  """Query -> product retrieval over the eval products: R@1 of a label-2 hit."""
  embed_products, embed_queries = fns
  products, product_ids = common.embed_all(embed_products, params,
                                           data.product_batches, mesh)
  queries, query_index = common.embed_all(embed_queries, params,
                                          data.query_batches, mesh)
  # Queries without a label-2 product among the eval products don't count.
  keep = np.array([bool(data.relevant[q]) for q in query_index])
  top = product_ids[np.argmax(queries[keep] @ products.T, axis=1)]
  hits = [int(p) in data.relevant[q] for p, q in zip(top, query_index[keep])]
  return {"eval/r@1": float(np.mean(hits)) if hits else float("nan")}


def train(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains stage 2 in `workdir`; returns the exported model directory."""
  common.install_sigterm_handler()
  os.makedirs(workdir, exist_ok=True)
  tc = config.train

  # --- Mesh and init weights: stage 1's model or a converted BLIP. --------
  mesh, init_dir, model_config, init_params = common.mesh_and_init(
      config, "stage 2")
  if init_params is not None and config.init.query_from_text:
    # DashCLIP: the query tower starts as a copy of the text encoder.
    init_params = common.copy_text_to_query(init_params, model_config)

  # --- Data. ---------------------------------------------------------------
  train_iter = inputs.stage2_train(config.data, model_config, tc.batch_size,
                                   seed=config.seed)
  eval_data = inputs.stage2_eval(config.data, model_config,
                                 config.eval.batch_size)

  # --- Optimizer (product tower frozen unless trained) and state. ---------
  step_cfg = common.step_config(config.loss, tc.accum_steps)
  frozen = () if step_cfg.train_product_tower else (
      (train_steps.PRODUCT_TOWER_REGEX, 0.0),)
  optim_cfg = common.optim_config(config.optim, tc.total_steps, frozen)
  tx, state = common.make_state(model_config, step_cfg, optim_cfg,
                                config.seed, mesh, init_params)

  # --- Resume: own workdir, else the init checkpoint (above), else fresh. ---
  ckpts = common.open_checkpoints(config, workdir)
  state, resumed = common.restore(ckpts, state, train_iter)
  if not resumed:
    log.info("initialised from %s", init_dir or "scratch (no init.checkpoint)")

  # --- The step (compiled once, explicit shardings, state donated), loop. --
  step_fn = common.guard_nonfinite(
      train_steps.make_stage2_step(model_config, step_cfg, tx, mesh))
  eval_fns = make_eval_fns(model_config, mesh)
  writer = metric_writer.MetricWriter(workdir, tc.total_steps)
  if not resumed:
    before = evaluate(eval_fns, state.params, eval_data, mesh)
    log.info("before stage 2: %s", before)
    writer.write(0, before)
  state = common.train_loop(
      config, "stage 2", state, train_iter, step_fn, mesh,
      lambda params: evaluate(eval_fns, params, eval_data, mesh), ckpts,
      writer, optim.schedule(optim_cfg))
  return common.export_model(workdir, tc.total_steps, state.params,
                             model_config,
                             provenance=dict(stage="stage2", workdir=workdir,
                                             init=init_dir or "random"))
