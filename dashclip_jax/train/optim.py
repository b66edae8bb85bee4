"""AdamW with warmup + cosine, decay mask, clipping, per-module LR / freezing.

Parameters are selected by regex over their "/"-joined path (e.g.
"img/block_0/attn/query/kernel", "temp"), the public naming of model/.
`lr_mults=[("img/.*", 0.0), (".*", 1.0)]`: first match wins; a multiplier of
0 freezes the params (their grads are zeroed before clipping, and they get
no Adam state).

Weight decay (our choice, differs from BLIP which decays everything, see
BLIP_REFERENCE §6.15): only weight matrices/kernels and token embeddings
decay; biases, LayerNorm scales, `temp`, and the ViT's `pos_embed` /
`cls_token` (learned position/class vectors, like biases) do not. Decaying
`temp` in particular pulls the temperature towards 0, i.e. sharper logits,
for no reason but regularisation.
"""

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import optax

NO_DECAY_NAMES = ("pos_embed", "cls_token", "temp")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  lr: float = 1e-5
  warmup_steps: int = 0
  total_steps: int = 1000
  init_lr: float = 0.0  # LR at step 0, warmup goes linearly to `lr`.
  end_lr: float = 0.0  # Cosine floor.
  weight_decay: float = 0.05
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  clip_norm: float | None = 1.0  # Global-norm clipping; None = off.
  lr_mults: tuple[tuple[str, float], ...] = ((".*", 1.0),)


def path_str(path) -> str:
  """jax tree path -> "img/block_0/attn/query/kernel"."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def tree_paths(params: Any) -> Any:
  """Pytree of "/"-joined path strings, same structure as params."""
  return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), params)


def lr_mult_tree(params: Any, rules: Sequence[tuple[str, float]]) -> Any:
  """Per-leaf multiplier from the first matching regex (fullmatch)."""
  compiled = [(re.compile(r), float(m)) for r, m in rules]

  def pick(path: str) -> float:
    for r, m in compiled:
      if r.fullmatch(path):
        return m
    raise ValueError(f"lr_mults: no rule matches param {path!r}; "
                     "end the rules with ('.*', 1.0).")
  return jax.tree.map(pick, tree_paths(params))


def trains_any(params: Any, rules: Sequence[tuple[str, float]],
               regex: str) -> bool:
  """Whether some param whose path fullmatches `regex` has a non-zero mult."""
  pattern = re.compile(regex)
  mults = jax.tree.leaves(lr_mult_tree(params, rules))
  paths = jax.tree.leaves(tree_paths(params))
  return any(m != 0.0 and pattern.fullmatch(p) for p, m in zip(paths, mults))


def trained_modules(params: Any, rules: Sequence[tuple[str, float]]
                    ) -> list[str]:
  """Top-level modules with at least one param of non-zero mult (for logs)."""
  mults = jax.tree.leaves(lr_mult_tree(params, rules))
  paths = jax.tree.leaves(tree_paths(params))
  return sorted({p.split("/")[0] for p, m in zip(paths, mults) if m != 0.0})


def decay_mask(params: Any) -> Any:
  """True where weight decay applies: >= 2-D tensors, except NO_DECAY_NAMES."""
  def decays(path, x):
    name = path_str(path).split("/")[-1]
    return x.ndim >= 2 and name not in NO_DECAY_NAMES
  return jax.tree_util.tree_map_with_path(decays, params)


def schedule(c: OptimConfig) -> optax.Schedule:
  """Linear warmup init_lr -> lr over warmup_steps, then cosine to end_lr."""
  return optax.warmup_cosine_decay_schedule(
      init_value=c.init_lr, peak_value=c.lr, warmup_steps=c.warmup_steps,
      decay_steps=max(c.total_steps, c.warmup_steps + 1), end_value=c.end_lr)


def make_optimizer(c: OptimConfig, params: Any) -> optax.GradientTransformation:
  """AdamW (+ clipping, decay mask, LR multipliers/freezing) for `params`.

  `params` may be abstract (ShapeDtypeStructs): only paths and ranks are read.
  """
  mults = lr_mult_tree(params, c.lr_mults)
  labels = jax.tree.map(lambda m: "frozen" if m == 0.0 else f"x{m:g}", mults)
  frozen = jax.tree.map(lambda m: m == 0.0, mults)
  sched = schedule(c)
  groups = {}
  for m in set(jax.tree.leaves(mults)):
    if m == 0.0:
      groups["frozen"] = optax.set_to_zero()
    else:
      groups[f"x{m:g}"] = optax.adamw(
          lambda step, m=m: sched(step) * m, b1=c.b1, b2=c.b2, eps=c.eps,
          weight_decay=c.weight_decay, mask=decay_mask)
  chain = [optax.masked(optax.set_to_zero(), frozen)]  # frozen out of the norm
  if c.clip_norm is not None:
    chain.append(optax.clip_by_global_norm(c.clip_norm))
  chain.append(optax.multi_transform(groups, labels))
  return optax.chain(*chain)
