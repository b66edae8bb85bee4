"""The analytic FLOP counts (used for MFU) equal the matmuls the model runs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jex_core

from dashclip_jax import flops
from dashclip_jax import model as model_lib


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
      rhs = eqn.invars[1].aval.shape  # HWIO after flax's dimension numbers.
      out = eqn.outvars[0].aval.shape
      total += 2 * math.prod(out) * math.prod(rhs[:-1])
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


def test_step_counts_scale_as_documented():
  cfg = model_lib.model_config("small")
  one = flops.stage1_step(cfg, 1, 16)
  # Per-example work is linear in batch; only the B x B similarity is not.
  sim = lambda b: 3 * 2 * b * cfg.embed_dim * b  # noqa: E731
  assert flops.stage1_step(cfg, 8, 16) - sim(8) == 8 * (one - sim(1))
  frozen = flops.stage2_step(cfg, 4, 16, 8, 3)
  trained = flops.stage2_step(cfg, 4, 16, 8, 3, train_product_tower=True)
  product = (flops.image_forward(cfg)
             + flops.text_forward(cfg.text, 16, cfg.vision))
  assert trained - frozen == 4 * 2 * product
  np.testing.assert_array_less(0, [one, frozen])
