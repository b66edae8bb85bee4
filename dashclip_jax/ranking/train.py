"""Training and scoring a click model: a jitted step on the device mesh.

Params are small (replicated); the batch is split over ("data", "fsdp"),
the frozen embedding tables are replicated arguments, and the loss is the
mean log-loss of the global batch, so any mesh takes the same step
(tested). Batches are consecutive slices of a seeded permutation per epoch
(the last partial batch of an epoch is dropped); each process builds its
slice of every global batch. `examples_per_s` is the training loop's rate
(host batching and the step) after the first, compiling step.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from tqdm import auto as tqdm

from dashclip_jax.ranking import models
from dashclip_jax.runtime import config_files
from dashclip_jax.train import sharding as shard_lib
from dashclip_jax.train import state as train_state


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """config.train."""
  batch_size: int = 512
  epochs: int = 3
  lr: float = 2e-3
  weight_decay: float = 1e-5
  warmup_steps: int = 50
  eval_batch_size: int = 4096
  fast_compile: bool = False
  progress: bool = True

  @classmethod
  def of(cls, cfg: Any) -> "TrainSettings":
    return cls(**(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)))


def optimizer(settings: TrainSettings, total_steps: int
              ) -> optax.GradientTransformation:
  """AdamW, linear warmup then cosine decay to 0."""
  warmup = min(settings.warmup_steps, max(total_steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, settings.lr, warmup, max(total_steps, warmup + 1))
  return optax.adamw(schedule, weight_decay=settings.weight_decay)


def make_train_step(module: models.Ranker, tx: optax.GradientTransformation):
  """-> step(state, batch, tables) -> (state, metrics), a pure function."""

  def loss_fn(params, batch, tables):
    logits = module.apply({"params": params}, batch, tables)
    return optax.sigmoid_binary_cross_entropy(logits, batch["click"]).mean()

  def step(state: train_state.ParamState, batch: dict, tables: dict):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, tables)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return train_state.ParamState(state.step + 1, params, opt_state), {
        "loss": loss, "grad_norm": optax.tree.norm(grads)}

  return step


def init_params(module: models.Ranker, example: dict, tables: dict | None,
                seed: int) -> Any:
  """Numpy params from two example rows."""
  rows = {k: np.asarray(v[:2]) for k, v in example.items()}
  params = jax.jit(module.init)(jax.random.key(seed), rows, tables)["params"]
  return jax.tree.map(np.asarray, params)


def init_state(params: Any, tx: optax.GradientTransformation,
               mesh: jax.sharding.Mesh
               ) -> tuple[train_state.ParamState, train_state.ParamState]:
  """-> (state born replicated on `mesh` (the params are small), its
  shardings)."""
  rep = shard_lib.replicated(mesh)
  return train_state.init_param_state(
      params, jax.tree.map(lambda _: rep, params), tx, mesh)


def device_tables(tables, mesh: jax.sharding.Mesh) -> dict | None:
  """An embeddings.Tables (or None) as replicated device arrays."""
  if tables is None:
    return None
  return jax.device_put({"product": tables.product, "query": tables.query},
                        shard_lib.replicated(mesh))


def epoch_rows(num_rows: int, batch_size: int, epoch: int, seed: int
               ) -> np.ndarray:
  """int (steps, batch) rows of one epoch: a seeded permutation, cut."""
  steps = num_rows // batch_size
  perm = np.random.default_rng([seed, epoch]).permutation(num_rows)
  return perm[:steps * batch_size].reshape(steps, batch_size)


def _local_slice(rows: np.ndarray) -> np.ndarray:
  n, i = jax.process_count(), jax.process_index()
  local = len(rows) // n
  return rows[i * local:(i + 1) * local]


def train(module: models.Ranker, inputs: dict[str, np.ndarray],
          click: np.ndarray, tables, settings: TrainSettings,
          mesh: jax.sharding.Mesh, seed: int, desc: str = "train"
          ) -> tuple[Any, dict]:
  """-> (numpy params, stats: steps, loss, examples_per_s, seconds)."""
  shard_lib.check_batch_divisible(settings.batch_size, mesh)
  steps_per_epoch = len(click) // settings.batch_size
  if steps_per_epoch < 1:
    raise config_files.ConfigError(
        f"{len(click)} training rows are fewer than one batch "
        f"(config.train.batch_size={settings.batch_size})")
  total = steps_per_epoch * settings.epochs
  tx = optimizer(settings, total)
  dev_tables = device_tables(tables, mesh)
  params = init_params(module, inputs, dev_tables, seed)
  state, shardings = init_state(params, tx, mesh)
  step_fn, jitted = make_train_step(module, tx), None
  bar = tqdm.tqdm(total=total, desc=desc, unit="step", mininterval=5.0,
                  disable=not settings.progress)
  tick = start = time.time()
  losses, done = [], 0
  for epoch in range(settings.epochs):
    for rows in epoch_rows(len(click), settings.batch_size, epoch, seed):
      rows = _local_slice(rows)
      batch = {k: v[rows] for k, v in inputs.items()}
      batch["click"] = click[rows]
      batch = shard_lib.global_batch(batch, mesh)
      if jitted is None:
        jitted = train_state.jit_step(step_fn, shardings, batch, mesh,
                                      fast_compile=settings.fast_compile)
      state, metrics = jitted(state, batch, dev_tables)
      if done == 0:  # Compiled and run once: time from here.
        jax.block_until_ready(metrics)
        start = time.time()
      losses.append(metrics["loss"])
      done += 1
      bar.update(1)
      if settings.progress and done % 50 == 0:
        bar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
  jax.block_until_ready(state)
  bar.close()
  timed = max(total - 1, 1)
  stats = {"steps": total, "loss": float(np.mean(jax.device_get(
      losses[-steps_per_epoch:]))),
           "examples_per_s": timed * settings.batch_size / max(
               time.time() - start, 1e-9),
           "seconds": time.time() - tick}
  return jax.tree.map(np.asarray, jax.device_get(state.params)), stats


def predict(module: models.Ranker, params: Any, inputs: dict[str, np.ndarray],
            tables, mesh: jax.sharding.Mesh, batch_size: int) -> np.ndarray:
  """float32 (M,) P(click) of every row (padded to whole batches)."""
  shard_lib.check_batch_divisible(batch_size, mesh)
  rep = shard_lib.replicated(mesh)
  params = jax.device_put(params, rep)
  dev_tables = device_tables(tables, mesh)
  forward = jax.jit(lambda p, b, t: jax.nn.sigmoid(
      module.apply({"params": p}, b, t)))
  n, out = len(next(iter(inputs.values()))), []
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size).clip(max=n - 1)
    batch = shard_lib.global_batch(
        {k: v[_local_slice(rows)] for k, v in inputs.items()}, mesh)
    probs = forward(params, batch, dev_tables)
    if jax.process_count() > 1:
      probs = multihost_utils.process_allgather(probs, tiled=True)
    out.append(np.asarray(probs)[:min(batch_size, n - start)])
  return np.concatenate(out).astype(np.float32)
