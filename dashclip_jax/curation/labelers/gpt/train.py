"""Fine-tuning the GPT labeler on seed labels: a jitted step on the mesh.

The loss is the label token's cross-entropy under the labeler's own
distribution: the softmax over the three label tokens' logits at the answer
position (the last column of a left-padded prompt). Two ways to train:
  full  every param, Adam moments sharded like their params;
  LoRA  (`lora_rank` > 0) a low-rank tree on the attention and MLP
        projections (`lora.merge`), the base params frozen: passed to the
        step as a sharded argument, not differentiated, not donated.
As in `cross_encoder.train` (whose batch order and optimizer this
shares) the state is born sharded, the batch is split over ("data",
"fsdp") and the loss is a global-batch mean, so every mesh takes the same
step (tested).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dashclip_jax.curation.labelers.cross_encoder import train as teacher_train
from dashclip_jax.curation.labelers.gpt import lora as lora_lib
from dashclip_jax.curation.labelers.gpt import model as model_lib
from dashclip_jax.train import optim
from dashclip_jax.train import sharding as shard_lib
from dashclip_jax.train import state as train_state

log = logging.getLogger("dashclip_jax")


def lora_scale(rank: int, alpha: float) -> float | None:
  """alpha / rank, or None for full fine-tuning (rank 0)."""
  return alpha / rank if rank > 0 else None


def make_train_step(config: model_lib.LlamaConfig, label_ids: Any,
                    tx: optax.GradientTransformation,
                    scale: float | None):
  """-> step(state, batch, frozen) -> (state, metrics), a pure function.

  batch: ids, mask int32 (B, L) left-padded, label int32 (B,), weight
  float32 (B,) (0 on padding rows). `frozen`: the base params under LoRA
  (`scale` set), {} for full fine-tuning.
  """
  module = model_lib.Llama(config)
  label_ids = jnp.asarray(label_ids, jnp.int32)

  def loss_fn(trainable, frozen, batch):
    params = trainable if scale is None else lora_lib.merge(
        frozen, trainable, scale)
    logits = module.apply({"params": params}, batch["ids"], batch["mask"],
                          label_ids, method=model_lib.Llama.next_token)
    return teacher_train.label_loss(logits, batch["label"], batch["weight"])

  def step(state: train_state.ParamState, batch: dict, frozen: Any):
    trainable, opt_state, metrics = teacher_train.descend(
        loss_fn, tx, state.params, state.opt_state, frozen, batch)
    return train_state.ParamState(state.step + 1, trainable,
                                  opt_state), metrics

  return step


def trainable_start(config: model_lib.LlamaConfig, params: Any,
                    lora_rank: int, seed: int) -> Any:
  """The tree the optimizer moves: the params, or a fresh LoRA tree."""
  if lora_rank <= 0:
    return params
  return jax.tree.map(np.asarray, lora_lib.init(params, lora_rank,
                                                jax.random.key(seed)))


def shardings(config: model_lib.LlamaConfig, trainable: Any, lora: bool,
              mesh: jax.sharding.Mesh) -> tuple[Any, Any]:
  """-> (the trainable tree's shardings, the frozen params' or {})."""
  boxed = model_lib.abstract_boxed(config)
  param_sh = shard_lib.param_shardings(boxed, mesh)
  if not lora:
    return param_sh, {}
  specs = lora_lib.logical_specs(nn.get_partition_spec(boxed), trainable)
  return shard_lib.logical_to_sharding(specs, trainable, mesh), param_sh


def decays(path, _) -> bool:
  """Weight decay on kernels, embeddings and LoRA factors; not on the
  norms' scales (2-D here only because the layers are stacked)."""
  return optim.path_str(path).split("/")[-1] != "scale"


def make_optimizer(settings: teacher_train.TrainSettings
                   ) -> optax.GradientTransformation:
  """AdamW on the project's warmup + cosine schedule, clipped at norm 1."""
  sched = optim.schedule(optim.OptimConfig(
      lr=settings.lr, warmup_steps=settings.warmup_steps,
      total_steps=settings.steps))
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      sched, weight_decay=settings.weight_decay,
      mask=lambda tree: jax.tree_util.tree_map_with_path(decays, tree)))


def padded_width(mask: np.ndarray, multiple: int) -> int:
  """Columns left-padded rows need: their longest, rounded up to a
  multiple of `multiple` (at most the rows' width)."""
  longest = int(mask.sum(1).max(initial=1))
  return min(-(-longest // multiple) * multiple, mask.shape[1])


def train(config: model_lib.LlamaConfig, params: Any,
          inputs: dict[str, np.ndarray], labels: np.ndarray,
          label_ids: Any, settings: teacher_train.TrainSettings,
          mesh: jax.sharding.Mesh, *, lora_rank: int = 0,
          lora_alpha: float = 16.0, length_multiple: int = 16
          ) -> tuple[dict, list[dict]]:
  """Fine-tunes on `inputs` (ids, mask (N, L), left-padded) with `labels`
  (N,) -> (the trained tree as numpy: the params, or the LoRA tree; the
  logged metrics). Each batch drops the padding columns its rows all share
  (kept to a multiple of `length_multiple`: a few shapes, each compiled
  once), so short prompts do not pay for the longest."""
  local = shard_lib.local_batch_size(settings.batch_size, mesh, "GPT teacher batch")
  proc = jax.process_index()
  scale = lora_scale(lora_rank, lora_alpha)
  trainable = trainable_start(config, params, lora_rank, settings.seed)
  trainable_sh, frozen_sh = shardings(config, trainable, scale is not None,
                                      mesh)
  frozen = jax.device_put(params, frozen_sh) if scale is not None else {}
  tx = make_optimizer(settings)
  state, state_sh = train_state.init_param_state(trainable, trainable_sh, tx,
                                                 mesh)
  step_fn, jitted, history = make_train_step(config, label_ids, tx,
                                             scale), None, []
  tick = time.time()
  for step in range(settings.steps):
    rows = teacher_train.batch_indices(len(labels), settings.batch_size,
                                       step, settings.seed)
    # The width from the global batch: every process cuts the same.
    width = padded_width(inputs["mask"][rows], length_multiple)
    rows = rows[proc * local:(proc + 1) * local]
    ids, mask = inputs["ids"][rows, -width:], inputs["mask"][rows, -width:]
    batch = shard_lib.global_batch({
        "ids": ids, "mask": mask, "label": labels[rows].astype(np.int32),
        "weight": np.ones(len(rows), np.float32)}, mesh)
    if jitted is None:
      jitted = train_state.jit_step(step_fn, state_sh, batch, mesh,
                                    extra_sh=frozen_sh,
                                    fast_compile=settings.fast_compile)
    state, metrics = jitted(state, batch, frozen)
    if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      rate = settings.batch_size * (step + 1) / (time.time() - tick)
      history.append({"step": step + 1, **m, "pairs_per_s": rate})
      log.info("GPT teacher step %d/%d: loss %.4f, accuracy %.3f, %.1f "
               "pairs/s", step + 1, settings.steps, m["loss"], m["accuracy"],
               rate)
  return jax.tree.map(np.asarray, jax.device_get(state.params)), history
