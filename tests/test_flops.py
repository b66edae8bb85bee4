"""The analytic FLOP counts (used for MFU) equal the matmuls the model runs."""

import math

import jax
import jax.numpy as jnp
import pytest
from jax.extend import core as jex_core

from dashclip_jax import model as model_lib
from dashclip_jax.train import flops
from dashclip_jax.train import optim
from dashclip_jax.train import state as train_state
from dashclip_jax.train import step_config
from dashclip_jax.train import steps as ts


def _matmul_flops(jaxpr) -> int:
  """2 x multiply-adds of every dot_general / conv in a (nested) jaxpr."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      k = math.prod(lhs[d] for d in lhs_contract)
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * k
    elif name == "conv_general_dilated":
      # Each output element sums over the kernel's window and input
      # features: the kernel's size over its output features. (The kernel
      # gradient is a conv too, with the output cotangent as kernel.)
      assert eqn.params["feature_group_count"] == 1
      assert eqn.params["batch_group_count"] == 1
      rhs = eqn.invars[1].aval.shape
      out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += (2 * math.prod(eqn.outvars[0].aval.shape)
                * math.prod(rhs) // out_features)
    elif name in ("scan", "while"):
      raise NotImplementedError(f"{name}: count its body times its trips")
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (list, tuple)) else [v]):
        if isinstance(sub, jex_core.ClosedJaxpr):
          total += _matmul_flops(sub.jaxpr)
        elif isinstance(sub, jex_core.Jaxpr):
          total += _matmul_flops(sub)
  return total


def _count(fn, *args) -> int:
  return _matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_forward_counts_equal_model_matmuls(size):
  cfg = model_lib.model_config(size)
  model = model_lib.DashClip(cfg)
  m = model_lib.DashClip
  params = model_lib.abstract_params(cfg)
  b, length, s = 3, 7, cfg.vision.image_size
  images = jnp.zeros((b, s, s, 3))
  ids = jnp.zeros((b, length), jnp.int32)
  n_img = flops.vision_tokens(cfg.vision)
  tokens = jnp.zeros((b, n_img, cfg.vision.width))

  def apply(method, *args):
    return lambda p: model.apply({"params": p}, *args, method=method)

  assert _count(apply(m.encode_image, images), params) == (
      b * flops.image_forward(cfg))
  text_proj = 2 * cfg.text.width * cfg.embed_dim
  assert _count(apply(m.encode_text, ids, ids), params) == b * (
      flops.text_forward(cfg.text, length) + text_proj)
  itm_head = 2 * cfg.text.width * 2
  assert _count(apply(m.itm_logits, ids, ids, tokens), params) == b * (
      flops.text_forward(cfg.text, length, cfg.vision) + itm_head)
  # Two texts per image: the image's keys/values are projected once.
  ids2 = jnp.zeros((2 * b, length), jnp.int32)
  assert _count(apply(m.itm_logits, ids2, ids2, tokens), params) == b * (
      flops.text_forward(cfg.text, length, cfg.vision, 2) + 2 * itm_head)
  assert (flops.text_forward(cfg.text, length, cfg.vision, 2)
          < 2 * flops.text_forward(cfg.text, length, cfg.vision))


def _spec(shape, dtype=jnp.int32):
  return jax.ShapeDtypeStruct(shape, dtype)


# The configs' freeze rules (configs/stage1.py, configs/stage2.py:tiny).
STAGE1_FROZEN = ((r"(query|query_proj|product_proj)/.*", 0.0), (".*", 1.0))
STAGE2_FROZEN = (
    (r"(img|txt|vision_proj|text_proj|itm_head)/.*", 0.0), (".*", 1.0))


def _traced_step_flops(stage, step_cfg, batch):
  """Matmul FLOPs of one traced train step (tiny model, abstract state)."""
  cfg = model_lib.model_config("tiny")
  tx = optim.make_optimizer(optim.OptimConfig(
      lr=1e-4, warmup_steps=1, total_steps=10,
      lr_mults=STAGE1_FROZEN if stage == 1 else STAGE2_FROZEN),
      model_lib.abstract_params(cfg))
  make = ts.make_stage1_step if stage == 1 else ts.make_stage2_step
  state = jax.eval_shape(
      lambda r: train_state.init_state(cfg, step_cfg, tx, r),
      jax.random.key(0))
  return _count(make(cfg, step_cfg, tx), state, batch, jax.random.key(1))


@pytest.mark.parametrize("momentum, queue", [(None, 0), (0.995, 8)])
def test_stage1_count_equals_the_traced_step(momentum, queue):
  """Forward, backward, momentum forwards and every similarity matrix."""
  cfg = model_lib.model_config("tiny")
  b, length, s = 4, 7, cfg.vision.image_size
  batch = {"image": _spec((b, s, s, 3), jnp.float32),
           "ids": _spec((b, length)), "mask": _spec((b, length)),
           "product_id": _spec((b,))}
  traced = _traced_step_flops(1, step_config.StepConfig(
      momentum=momentum, queue_size=queue), batch)
  assert traced == flops.stage1_step(cfg, b, length,
                                     momentum=momentum is not None,
                                     queue_size=queue)
  if momentum is not None:  # The momentum encoders' forwards are counted.
    assert traced - flops.stage1_step(cfg, b, length) > b * (
        flops.image_forward(cfg) + flops.text_forward(cfg.text, length))


@pytest.mark.parametrize("mode", ["trained", "frozen", "cached"])
def test_stage2_count_equals_the_traced_step(mode):
  """Product tower trained, frozen (forward only) or cached (not run)."""
  cfg = model_lib.model_config("tiny")
  b, lt, lq, n, s = 4, 7, 5, 2, cfg.vision.image_size
  batch = {"query_ids": _spec((b, lq)), "query_mask": _spec((b, lq)),
           "product_id": _spec((b,)),
           "neg_query_ids": _spec((b, n, lq)),
           "neg_query_mask": _spec((b, n, lq)),
           "neg_valid": _spec((b, n), jnp.bool_),
           "label_weight": _spec((b,), jnp.float32)}
  if mode == "cached":
    batch["product_features"] = _spec((b, cfg.text.width), jnp.float32)
  else:
    batch.update(image=_spec((b, s, s, 3), jnp.float32),
                 title_ids=_spec((b, lt)), title_mask=_spec((b, lt)))
  traced = _traced_step_flops(2, step_config.StepConfig(
      train_product_tower=mode == "trained"), batch)
  assert traced == flops.stage2_step(
      cfg, b, lt, lq, n, train_product_tower=mode == "trained",
      cached_features=mode == "cached")
