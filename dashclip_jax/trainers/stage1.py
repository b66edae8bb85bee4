"""Stage 1: continual pretraining of the product encoders (ITC + ITM).

Reads top to bottom: mesh -> init weights -> data -> optimizer and state
born sharded -> resume -> jitted step -> loop (log, eval, checkpoint) ->
exported model (`<workdir>/models/<step>`, what `dashclip_jax.load` reads).

Momentum distillation (`loss.momentum` > 0) from a converted BLIP
checkpoint starts from its momentum encoders and, when their size is
`loss.queue_size`, its ITC queues (`momentum/`, `queues/`); otherwise the
momentum encoders are copies of the online ones and the queues random.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from dashclip_jax.evaluation import knn
from dashclip_jax import model as model_lib
from dashclip_jax.model import model_dir as model_dir_lib
from dashclip_jax.train import metric_writer
from dashclip_jax.train import optim
from dashclip_jax.train import sharding as shard_lib
from dashclip_jax.train import state as train_state
from dashclip_jax.train import step_config as step_config_lib
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
  """Image<->text hit@1 over the eval products, each way and their mean."""
  img, txt, ids = embed_batches.embed_all(embed, params, batches, mesh)
  i2t, t2i = hit_at_1(img, txt, ids), hit_at_1(txt, img, ids)
  return {"eval/i2t_hit@1": i2t, "eval/t2i_hit@1": t2i,
          "eval/hit@1": (i2t + t2i) / 2}


def hit_at_1(queries: np.ndarray, items: np.ndarray, ids: np.ndarray
             ) -> float:
  """Fraction of `queries` rows whose most similar `items` row has their
  product id (hit@1: any row of that id counts, evaluation/metrics.py).

  Streamed top-1 (knn.exact_topk on this process's devices): no (N, N)
  scores. Ties go to the lower row; NaN scores rank last.
  """
  if not len(ids):
    return float("nan")
  _, top = knn.exact_topk(queries, items, k=1)
  return float(np.mean(ids[top[:, 0]] == ids))


def step_config(loss: ml_collections.ConfigDict, accum_steps: int,
                num_train: int, batch_size: int) -> step_config_lib.StepConfig:
  """config.loss -> StepConfig; `alpha_ramp_epochs` > 0 sets the alpha ramp
  to that many epochs of the `num_train` train products (BLIP: the first)."""
  epochs = loss.alpha_ramp_epochs
  cfg = step_options.step_config(ml_collections.ConfigDict(
      {k: v for k, v in loss.items() if k != "alpha_ramp_epochs"}),
                           accum_steps)
  if epochs > 0 and cfg.momentum is not None:
    steps = max(1, math.ceil(epochs * num_train / batch_size))
    cfg = dataclasses.replace(cfg, alpha_ramp_steps=steps)
    log.info("stage 1: alpha ramps to %g over %d steps (%g epoch(s) of %d "
             "train products at batch %d)", cfg.alpha, steps, epochs,
             num_train, batch_size)
  return cfg


def momentum_init(init_dir: str | None, step_cfg: step_config_lib.StepConfig,
                  init_params, embed_dim: int) -> tuple[Any, Any]:
  """-> (momentum encoders, ITC queues) of a converted BLIP checkpoint, for
  `step_options.make_state`; None for either that starts as a copy / at random.

  Only under momentum distillation. The queues load when their size is
  `loss.queue_size`, with their pointer; their ids name the source data's
  images, not products here, so they become -1 (never a positive).
  """
  if step_cfg.momentum is None or not init_dir:
    return None, None
  _, trees, _ = model_dir_lib.load_model_dir(init_dir,
                                             items=("momentum", "queues"))
  return (_momentum_params(init_dir, trees.get("momentum"), init_params),
          _queues(init_dir, trees.get("queues"), step_cfg.queue_size,
                  embed_dim))


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def _momentum_params(init_dir: str, saved, init_params):
  if saved is None:
    log.info("stage 1: %s has no momentum encoders: they start as copies "
             "of the online ones", init_dir)
    return None
  want = {n: init_params[n] for n in train_state.MOMENTUM_MODULES}
  got = {n: saved.get(n, {}) for n in train_state.MOMENTUM_MODULES}
  have, need = _shapes(got), _shapes(want)
  if have != need:
    bad = sorted(set(have) ^ set(need)) or sorted(
        k for k in need if have[k] != need[k])
    log.warning("stage 1: the momentum encoders of %s do not fit the model "
                "(%d arrays differ, e.g. %s): they start as copies of the "
                "online ones", init_dir, len(bad), bad[0])
    return None
  log.info("stage 1: momentum encoders (%s) from %s",
           ", ".join(train_state.MOMENTUM_MODULES), init_dir)
  return jax.tree.map(lambda g, w: np.asarray(g, w.dtype), got, want)


def _queues(init_dir: str, saved, size: int, embed_dim: int):
  rows = None if saved is None else saved["image_queue"].shape
  if not size:
    if saved is not None:
      log.info("stage 1: loss.queue_size=0: the %d-row ITC queues of %s "
               "are not used", rows[0], init_dir)
    return None
  if saved is None:
    log.info("stage 1: %s has no ITC queues: %d random rows", init_dir, size)
    return None
  if rows != (size, embed_dim):
    log.info("stage 1: the ITC queues of %s are %s, loss.queue_size=%d and "
             "embed_dim %d need (%d, %d): they start random (loss."
             "queue_size=%d loads them)", init_dir, rows, size, embed_dim,
             size, embed_dim, rows[0])
    return None
  ptr = int(np.asarray(saved.get("queue_ptr", 0)).reshape(())) % size
  log.info("stage 1: ITC queues from %s: %d rows, pointer %d (their ids are "
           "the source data's: set to -1, never positives)", init_dir, size,
           ptr)
  return {"img": np.asarray(saved["image_queue"], np.float32),
          "txt": np.asarray(saved["text_queue"], np.float32),
          "ids": np.full((size,), -1, np.int32),
          "ptr": np.asarray(ptr, np.int32)}


def train(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains stage 1 in `workdir`; returns the exported model directory."""
  preemption.install_sigterm_handler()
  os.makedirs(workdir, exist_ok=True)
  tc = config.train

  # --- Mesh, model geometry and init weights. ------------------------------
  mesh, init_dir, model_config, init_params = init_checkpoint.mesh_and_init(
      config, "stage 1")

  # --- Data (this process's slice of every global batch). -----------------
  train_iter = inputs.stage1_train(config.data, model_config, tc.batch_size,
                                   seed=config.seed)
  eval_batches = eval_inputs.stage1_eval(config.data, model_config,
                                    config.eval.batch_size)

  # --- Optimizer and state, born sharded. -----------------------------------
  step_cfg = step_config(
      config.loss, tc.accum_steps,
      len(inputs.load_sources(config.data).train_catalog), tc.batch_size)
  # The query tower and product_proj are unused here: frozen (no decay).
  optim_cfg = step_options.optim_config(config.optim, tc.total_steps)
  init_m, init_q = momentum_init(init_dir, step_cfg, init_params,
                                 model_config.embed_dim)
  tx, state = step_options.make_state(model_config, step_cfg, optim_cfg,
                                      config.seed, mesh, init_params,
                                      init_momentum=init_m, init_queue=init_q)

  # --- Resume: own workdir, else the init checkpoint (above), else fresh. ---
  init_name = init_checkpoint.init_name(config, init_dir)
  ckpts = resume.open_checkpoints(config, workdir)
  state, resumed = resume.restore(ckpts, state, train_iter)
  if not resumed and init_dir:
    log.info("initialised from %s", init_dir)
  elif not resumed:
    # The untrained start, kept as the main job's "init" reference.
    export.export_model(workdir, 0, state.params, model_config,
                        provenance=dict(stage="stage1", init=init_name))

  # --- The step (compiled once, explicit shardings, state donated), loop. --
  step_fn = nonfinite.guard_nonfinite(
      train_steps.make_stage1_step(model_config, step_cfg, tx, mesh))
  embed = make_eval_fn(model_config, mesh)
  state = loop.train_loop(
      config, "stage 1", state, train_iter=train_iter, step_fn=step_fn,
      mesh=mesh,
      evaluate=lambda params: evaluate(embed, params, eval_batches, mesh),
      ckpts=ckpts, writer=metric_writer.MetricWriter(workdir, tc.total_steps),
      lr_at=optim.schedule(optim_cfg))
  return export.export_model(workdir, tc.total_steps, state.params,
                             model_config,
                             provenance=dict(stage="stage1", workdir=workdir,
                                             init=init_name))
