"""DashClip's parameters without a forward pass of one's own: random init,
abstract shapes, unboxing and logical axis names (for `train/sharding.py`)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dashclip_jax.model import config as model_cfg
from dashclip_jax.model import dashclip

Array = jax.Array


def init_params(config: model_cfg.ModelConfig, rng: Array,
                text_length: int = 8) -> dict[str, Any]:
  """Random params (boxed with logical axis names) for `config`."""
  s = config.vision.image_size
  images = jnp.zeros((1, s, s, 3), jnp.float32)
  ids = jnp.zeros((1, text_length), jnp.int32)
  variables = dashclip.DashClip(config).init(rng, images, ids,
                                             jnp.ones_like(ids))
  return variables["params"]


def abstract_params(config: model_cfg.ModelConfig) -> dict[str, Any]:
  """Shapes and dtypes of the (unboxed) params of `config`, no FLOPs."""
  return jax.eval_shape(lambda r: unbox(init_params(config, r)),
                        jax.random.key(0))


def unbox(params):
  """Strips flax's logical-partitioning boxes -> plain arrays."""
  return nn.meta.unbox(params)


def logical_axes(config: model_cfg.ModelConfig, text_length: int = 8):
  """Pytree of logical PartitionSpecs, computed from shapes only (no FLOPs)."""
  abstract = jax.eval_shape(lambda r: init_params(config, r, text_length),
                            jax.random.key(0))
  return nn.get_partition_spec(abstract)
