"""Stage 1: continual pretraining of the product encoders (ITC + ITM).

Reads top to bottom: mesh -> init weights -> data -> optimizer and state
born sharded -> resume -> jitted step -> loop (log, eval, checkpoint) ->
exported model (`<workdir>/models/<step>`, what `dashclip_jax.load` reads).
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


def make_eval_fn(model_config: model_lib.ModelConfig, mesh):
  """-> jitted (params, global batch) -> (image emb, text emb, ids, valid).

  Outputs are replicated, so every process can read them whole.
  """
  module = model_lib.DashClip(model_config)

  def embed(params, batch):
    img, _ = module.apply({"params": params}, batch["image"],
                          method=model_lib.DashClip.encode_image)
    txt, _ = module.apply({"params": params}, batch["ids"], batch["mask"],
                          method=model_lib.DashClip.encode_text)
    return img, txt, batch["product_id"], batch["valid"]
  return jax.jit(embed, out_shardings=shard_lib.replicated(mesh))


def evaluate(embed, params, batches: list[dict[str, np.ndarray]], mesh
             ) -> dict[str, float]:
  """Image<->text retrieval R@1 over the eval products (a matching id wins)."""
  img, txt, ids = common.embed_all(embed, params, batches, mesh)
  i2t = common.retrieval_at_1(img, txt, ids)
  t2i = common.retrieval_at_1(txt, img, ids)
  return {"eval/i2t_r@1": i2t, "eval/t2i_r@1": t2i,
          "eval/r@1": (i2t + t2i) / 2}


def train(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains stage 1 in `workdir`; returns the exported model directory."""
  common.install_sigterm_handler()
  os.makedirs(workdir, exist_ok=True)
  tc = config.train

  # --- Mesh, model geometry and init weights. ------------------------------
  mesh, init_dir, model_config, init_params = common.mesh_and_init(
      config, "stage 1")

  # --- Data (this process's slice of every global batch). -----------------
  train_iter = inputs.stage1_train(config.data, model_config, tc.batch_size,
                                   seed=config.seed)
  eval_batches = inputs.stage1_eval(config.data, model_config,
                                    config.eval.batch_size)

  # --- Optimizer and state, born sharded. -----------------------------------
  step_cfg = common.step_config(config.loss, tc.accum_steps)
  # The query tower and product_proj are unused here: frozen (no decay).
  optim_cfg = common.optim_config(config.optim, tc.total_steps)
  tx, state = common.make_state(model_config, step_cfg, optim_cfg,
                                config.seed, mesh, init_params)

  # --- Resume: own workdir, else the init checkpoint (above), else fresh. ---
  init_name = common.init_name(config, init_dir)
  ckpts = common.open_checkpoints(config, workdir)
  state, resumed = common.restore(ckpts, state, train_iter)
  if not resumed and init_dir:
    log.info("initialised from %s", init_dir)
  elif not resumed:
    # The untrained start, kept as the main job's "init" reference.
    common.export_model(workdir, 0, state.params, model_config,
                        provenance=dict(stage="stage1", init=init_name))

  # --- The step (compiled once, explicit shardings, state donated), loop. --
  step_fn = common.guard_nonfinite(
      train_steps.make_stage1_step(model_config, step_cfg, tx, mesh))
  embed = make_eval_fn(model_config, mesh)
  state = common.train_loop(
      config, "stage 1", state, train_iter, step_fn, mesh,
      lambda params: evaluate(embed, params, eval_batches, mesh), ckpts,
      metric_writer.MetricWriter(workdir, tc.total_steps),
      optim.schedule(optim_cfg))
  return common.export_model(workdir, tc.total_steps, state.params,
                             model_config,
                             provenance=dict(stage="stage1", workdir=workdir,
                                             init=init_name))
