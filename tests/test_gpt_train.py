"""Fine-tuning the GPT labeler: LoRA by hand, the sharded step, learning."""

import functools

import flax.linen as nn
import helpers
import jax
import numpy as np
import pytest

from dashclip_jax.curation.labelers.cross_encoder import train as teacher_train
from dashclip_jax.curation.labelers.gpt import lora as lora_lib
from dashclip_jax.curation.labelers.gpt import model as model_lib
from dashclip_jax.curation.labelers.gpt import train as gpt_train
from dashclip_jax.train import sharding
from dashclip_jax.train import state as train_state

CONFIG = model_lib.tiny_config(vocab_size=64)
LABEL_IDS = np.array([10, 11, 12], np.int32)


@functools.cache
def _params(seed=0):
  init = jax.jit(model_lib.init_boxed, static_argnums=0)
  return jax.tree.map(np.asarray, nn.meta.unbox(init(CONFIG,
                                                     jax.random.key(seed))))


def _data(n=16, length=12, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, CONFIG.vocab_size, (n, length)).astype(np.int32)
  real = rng.integers(4, length + 1, n)
  mask = (np.arange(length)[None] >= length - real[:, None]).astype(np.int32)
  return {"ids": np.where(mask > 0, ids, 2), "mask": mask}, \
      rng.integers(0, 3, n)


def test_lora_merge_by_hand():
  params = _params()
  lora = lora_lib.init(params, 3, jax.random.key(1))
  merged = lora_lib.merge(params, lora, 2.0)  # b = 0: the base model.
  for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  lora = jax.tree.map(lambda x: np.asarray(x) + 0.1, lora)
  merged = lora_lib.merge(params, lora, 2.0)
  ab = lora["blocks"]["attn"]["out"]  # kernel (layers, heads, kv, embed)
  assert ab["a"].shape == (2, 4, 8, 3) and ab["b"].shape == (2, 3, 32)
  for layer in range(2):
    delta = ab["a"][layer].reshape(32, 3) @ ab["b"][layer]
    np.testing.assert_allclose(
        merged["blocks"]["attn"]["out"]["kernel"][layer],
        params["blocks"]["attn"]["out"]["kernel"][layer] +
        2.0 * delta.reshape(4, 8, 32), atol=1e-6)
  np.testing.assert_array_equal(merged["blocks"]["attn_norm"]["scale"],
                                params["blocks"]["attn_norm"]["scale"])
  assert set(lora["blocks"]) == {"attn", "mlp"} and len(
      jax.tree.leaves(lora)) == 14


def _steps(mesh_config, devices, lora_rank, steps=2, lr=1e-3, batch=8):
  mesh = sharding.make_mesh(mesh_config, devices)
  settings = teacher_train.TrainSettings(steps=steps, batch_size=batch,
                                         lr=lr, log_every=1,
                                         fast_compile=True)
  inputs, labels = _data()
  return gpt_train.train(CONFIG, _params(), inputs, labels, LABEL_IDS,
                         settings, mesh, lora_rank=lora_rank, lora_alpha=4.0)


def _first_grads(mesh_config, devices, lora_rank, batch=8):
  """The gradients of `gpt_train.train`'s first step, from its own step
  function (`helpers.keeping_grads` keeps them in the optimizer state)."""
  mesh = sharding.make_mesh(mesh_config, devices)
  settings = teacher_train.TrainSettings(steps=2, batch_size=batch, lr=1e-3)
  scale = gpt_train.lora_scale(lora_rank, 4.0)
  trainable = gpt_train.trainable_start(CONFIG, _params(), lora_rank, 0)
  trainable_sh, frozen_sh = gpt_train.shardings(CONFIG, trainable,
                                                bool(lora_rank), mesh)
  frozen = jax.device_put(_params(), frozen_sh) if lora_rank else {}
  tx = helpers.keeping_grads(gpt_train.make_optimizer(settings))
  state, state_sh = train_state.init_param_state(trainable, trainable_sh, tx,
                                                 mesh)
  inputs, labels = _data()
  data = sharding.global_batch({
      "ids": inputs["ids"][:batch], "mask": inputs["mask"][:batch],
      "label": labels[:batch].astype(np.int32),
      "weight": np.ones(batch, np.float32)}, mesh)
  step = train_state.jit_step(
      gpt_train.make_train_step(CONFIG, LABEL_IDS, tx, scale), state_sh,
      data, mesh, extra_sh=frozen_sh, fast_compile=True)
  state, _ = step(state, data, frozen)
  return jax.device_get(state.opt_state[0])


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_train_step_is_the_same_on_one_device_and_a_2x4_mesh(lora_rank):
  want, want_log = _steps([("data", 1)], jax.devices()[:1], lora_rank)
  got, got_log = _steps([("data", 2), ("fsdp", 4), ("tensor", 1)],
                        jax.devices(), lora_rank)
  losses = [h["loss"] for h in want_log]
  np.testing.assert_allclose([h["loss"] for h in got_log], losses, rtol=1e-5)
  assert losses[1] != losses[0]  # The step moved something.
  assert (jax.tree.structure(got) == jax.tree.structure(want))
  # Adam's second update divides two tiny moments where a gradient
  # changes sign, so reduction order can move such an element by a few
  # percent of the lr (1e-3; 1.1e-5 seen); a sharding bug moves many
  # elements by about the lr. Hence: every element within 5% of the lr,
  # and all but a few within 1e-6.
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=0)
    assert np.mean(np.abs(a - b) > 1e-6) < 0.01
  if lora_rank:  # Only the low-rank tree is trained and returned.
    assert set(got["blocks"]["attn"]["query"]) == {"a", "b"}
  # Clipping and AdamW hide a uniform gradient scale (a sum for a mean
  # over "data") from the params; the gradients show it.
  helpers.assert_same_grads(
      _first_grads([("data", 2), ("fsdp", 4), ("tensor", 1)], jax.devices(),
                   lora_rank),
      _first_grads([("data", 1)], jax.devices()[:1], lora_rank))


def test_a_few_steps_reduce_the_loss():
  # The whole 16-pair set every step: each logged loss is the set's.
  for lora_rank, lr in ((0, 3e-3), (4, 3e-2)):
    _, history = _steps([("data", 1)], jax.devices()[:1], lora_rank,
                        steps=8, lr=lr, batch=16)
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.8 * losses[0], (lora_rank, losses)


def test_batches_keep_only_the_padding_columns_some_row_needs():
  mask = lambda *real: (np.arange(40)[None] >= 40 - np.array(real)[:, None])
  assert gpt_train.padded_width(mask(3, 5), 16) == 16
  assert gpt_train.padded_width(mask(3, 20), 16) == 32
  assert gpt_train.padded_width(mask(40, 1), 16) == 40
