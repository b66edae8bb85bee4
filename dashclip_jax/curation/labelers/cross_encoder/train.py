"""Training a teacher on seed labels: a jitted step sharded on the mesh.

The state is born sharded (params by their logical axes, Adam moments like
their params, `sharding.optimizer_shardings`), the batch is split over
("data", "fsdp"), and the loss is the mean cross-entropy of the global
batch, so every mesh shape takes the same step (tested). Batches are drawn
from the seed pairs by a seeded permutation per epoch: step s reads the
same pairs on any number of processes, each process building its slice.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dashclip_jax.curation.labelers.cross_encoder import model as teacher_lib
from dashclip_jax.train import optim
from dashclip_jax.train import sharding as shard_lib
from dashclip_jax.train import state as train_state

log = logging.getLogger("dashclip_jax")


def label_loss(logits: jax.Array, label: jax.Array, weight: jax.Array
               ) -> tuple[jax.Array, dict]:
  """logits float32 (B, 3), label int32 (B,), weight float32 (B,) (0 on
  padding rows) -> (the weighted mean cross-entropy, {loss, accuracy}).
  A global-batch mean: the same number on every mesh."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, label)
  total = jnp.maximum(jnp.sum(weight), 1.0)
  loss = jnp.sum(ce * weight) / total
  hits = (jnp.argmax(logits, -1) == label) * weight
  return loss, {"loss": loss, "accuracy": jnp.sum(hits) / total}


def descend(loss_fn, tx: optax.GradientTransformation, trainable: Any,
            opt_state: Any, *args) -> tuple[Any, Any, dict]:
  """One optimizer step on `loss_fn(trainable, *args) -> (loss, metrics)`
  -> (trainable, opt_state, metrics with the gradient's global norm)."""
  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      trainable, *args)
  updates, opt_state = tx.update(grads, opt_state, trainable)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return optax.apply_updates(trainable, updates), opt_state, metrics


def make_train_step(config: teacher_lib.TeacherConfig,
                    tx: optax.GradientTransformation,
                    deterministic: bool = False):
  """-> step(state, batch, rng) -> (state, metrics), a pure function.

  batch: ids, mask int32 (B, L), label int32 (B,), weight float32 (B,)
  (0 on padding rows) [, images float32 (B, S, S, 3)].
  """
  module = teacher_lib.CrossEncoder(config)

  def loss_fn(params, batch, rng):
    logits = module.apply(
        {"params": params}, batch["ids"], batch["mask"], batch.get("images"),
        deterministic=deterministic, rngs={"dropout": rng})
    return label_loss(logits, batch["label"], batch["weight"])

  def step(state: train_state.ParamState, batch: dict, rng: jax.Array):
    params, opt_state, metrics = descend(loss_fn, tx, state.params,
                                         state.opt_state, batch, rng)
    return train_state.ParamState(state.step + 1, params, opt_state), metrics

  return step


def init_state(config: teacher_lib.TeacherConfig, params: Any,
               tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
               ) -> tuple[train_state.ParamState, train_state.ParamState]:
  """-> (state born sharded on `mesh` by the params' logical axes, its
  shardings)."""
  param_sh = shard_lib.param_shardings(teacher_lib.abstract_boxed(config),
                                       mesh)
  return train_state.init_param_state(params, param_sh, tx, mesh)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  steps: int
  batch_size: int  # Global.
  lr: float
  warmup_steps: int = 0
  weight_decay: float = 0.01
  log_every: int = 50
  seed: int = 0
  deterministic: bool = False  # True: no dropout.
  fast_compile: bool = False


def batch_indices(num_pairs: int, batch_size: int, step: int, seed: int
                  ) -> np.ndarray:
  """The global batch of `step`: consecutive slices of a seeded
  permutation per epoch (the same on every process)."""
  out = []
  start = step * batch_size
  epoch, offset = divmod(start, num_pairs)
  while len(out) < batch_size:
    perm = np.random.default_rng([seed, epoch]).permutation(num_pairs)
    take = perm[offset:offset + batch_size - len(out)]
    out.extend(take.tolist())
    epoch, offset = epoch + 1, 0
  return np.asarray(out, np.int64)


def train(config: teacher_lib.TeacherConfig, params: Any,
          inputs: dict[str, np.ndarray], labels: np.ndarray,
          settings: TrainSettings, mesh: jax.sharding.Mesh,
          images_of=None) -> tuple[dict, list[dict]]:
  """Trains on `inputs` (ids, mask (N, L)) with `labels` (N,) -> (numpy
  params, logged metrics). `images_of(rows)` gives float32 images of those
  pair rows for a multimodal teacher."""
  local = shard_lib.local_batch_size(settings.batch_size, mesh, "teacher batch")
  proc = jax.process_index()
  tx = optim.make_optimizer(optim.OptimConfig(
      lr=settings.lr, warmup_steps=settings.warmup_steps,
      total_steps=settings.steps, weight_decay=settings.weight_decay,
      clip_norm=1.0), params)
  state, shardings = init_state(config, params, tx, mesh)
  step_fn, jitted, history = make_train_step(config, tx,
                                             settings.deterministic), None, []
  base_rng, tick = jax.random.key(settings.seed), time.time()
  for step in range(settings.steps):
    rows = batch_indices(len(labels), settings.batch_size, step,
                         settings.seed)[proc * local:(proc + 1) * local]
    batch = {"ids": inputs["ids"][rows], "mask": inputs["mask"][rows],
             "label": labels[rows].astype(np.int32),
             "weight": np.ones(len(rows), np.float32)}
    if config.kind == "multimodal":
      batch["images"] = images_of(rows)
    batch = shard_lib.global_batch(batch, mesh)
    if jitted is None:
      jitted = train_state.jit_step(step_fn, shardings, batch, mesh,
                                    fast_compile=settings.fast_compile)
    state, metrics = jitted(state, batch,
                            jax.random.fold_in(base_rng, step))
    if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      rate = settings.batch_size * (step + 1) / (time.time() - tick)
      history.append({"step": step + 1, **m, "pairs_per_s": rate})
      log.info("teacher step %d/%d: loss %.4f, accuracy %.3f, %.0f pairs/s",
               step + 1, settings.steps, m["loss"], m["accuracy"], rate)
  return jax.tree.map(np.asarray, jax.device_get(state.params)), history
