"""LoRA as a param-tree transform: W + (alpha / rank) * A @ B.

The trainable tree mirrors the targeted kernels' paths (`blocks/attn/
query` -> {"a", "b"}); `merge(params, lora, scale)` is a pure function that
returns the full param tree with each targeted kernel replaced by its
low-rank-updated sum, so the model itself knows nothing of LoRA and the
gradient flows only into the small tree. A kernel (layers, *in, *out)
gets a (layers, *in, rank) and b (layers, rank, *out); b starts at zero, so
step 0 is the base model. The low-rank trees take their logical axes from
the kernels they update (the layer, input and output axes as the kernel
has them, the rank axis replicated).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

# Kernel (under params["blocks"]) -> its number of input dims.
TARGETS: dict[tuple[str, str], int] = {
    ("attn", "query"): 1, ("attn", "key"): 1, ("attn", "value"): 1,
    ("attn", "out"): 2,
    ("mlp", "gate"): 1, ("mlp", "up"): 1, ("mlp", "down"): 1,
}


def init(params: Any, rank: int, rng: jax.Array) -> dict:
  """The LoRA tree for `params` (numpy or jax, unboxed): a ~ N(0, 1/fan_in),
  b = 0."""
  if rank <= 0:
    raise ValueError(f"LoRA rank must be positive, got {rank}")
  out: dict = {"blocks": {}}
  for i, ((group, name), in_dims) in enumerate(TARGETS.items()):
    shape = np.shape(params["blocks"][group][name]["kernel"])
    layers, ins, outs = shape[0], shape[1:1 + in_dims], shape[1 + in_dims:]
    fan_in = int(np.prod(ins))
    a = jax.random.normal(jax.random.fold_in(rng, i), (layers, *ins, rank),
                          jnp.float32) / np.sqrt(fan_in)
    out["blocks"].setdefault(group, {})[name] = {
        "a": a, "b": jnp.zeros((layers, rank, *outs), jnp.float32)}
  return out


def delta(a: jax.Array, b: jax.Array) -> jax.Array:
  """A @ B per layer, shaped as the kernel (layers, *in, *out)."""
  layers, rank = a.shape[0], a.shape[-1]
  ins, outs = a.shape[1:-1], b.shape[2:]
  prod = jnp.einsum("lir,lro->lio", a.reshape(layers, -1, rank),
                    b.reshape(layers, rank, -1))
  return prod.reshape(layers, *ins, *outs)


def merge(params: Any, lora: dict, scale: float) -> Any:
  """`params` with each LoRA-targeted kernel W -> W + scale * A @ B."""
  blocks = dict(params["blocks"])
  for group, names in lora["blocks"].items():
    blocks[group] = dict(blocks[group])
    for name, ab in names.items():
      kernel = blocks[group][name]["kernel"]
      blocks[group][name] = {"kernel": kernel + (scale * delta(
          ab["a"], ab["b"])).astype(kernel.dtype)}
  return {**params, "blocks": blocks}


def logical_specs(param_specs: Any, lora: dict) -> dict:
  """Logical PartitionSpecs of `lora` from the params' specs
  (`nn.get_partition_spec` of the boxed params)."""
  out: dict = {"blocks": {}}
  for group, names in lora["blocks"].items():
    for name in names:
      spec = tuple(param_specs["blocks"][group][name]["kernel"])
      k = TARGETS[(group, name)]
      out["blocks"].setdefault(group, {})[name] = {
          "a": P(spec[0], *spec[1:1 + k], None),
          "b": P(spec[0], None, *spec[1 + k:])}
  return out
