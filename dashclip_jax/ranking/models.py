"""Click models in Flax: DCN-V2, and DCN-V2 with an embedding tower.

DCN-V2 (Wang et al. 2021), parallel form: x0 = [categorical embeddings,
numeric features]; a cross network, x_{l+1} = x0 * (W x_l + b) + x_l with W
full (D, D) or low rank (W = U V^T, rank r), beside an MLP over x0; their
outputs concatenated.

Kinds (`RankerConfig.kind`):
  baseline  DCN -> head MLP -> logit.
  tower     the paper's model: DCN and an embedding tower side by side,
            concatenated -> head MLP -> logit. The tower reads the projected
            product, query and pooled-history embeddings and the derived
            features cos(p, q), cos(p, pool) and has-history.
  single    the ablation: the same embedding inputs appended to x0 of the
            one DCN tower -> head MLP -> logit.
Every model returns logits (B,); P(click) = sigmoid(logit).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from dashclip_jax.ranking import features as features_lib

KINDS = ("baseline", "tower", "single")


@dataclasses.dataclass(frozen=True)
class RankerConfig:
  kind: str
  vocab: tuple[int, ...]        # Categorical sizes, features.CATEGORICAL.
  num_numeric: int = len(features_lib.NUMERIC)
  embed_dim: int = 8
  cross_layers: int = 2
  cross_rank: int = 0           # 0: full-rank W.
  mlp: tuple[int, ...] = (64, 32)
  tower_dim: int = 16
  tower_mlp: tuple[int, ...] = (64, 32)
  head_mlp: tuple[int, ...] = (32,)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"ranker kind {self.kind!r} not in {KINDS}")


class CrossLayer(nn.Module):
  """x_{l+1} = x0 * (W x_l + b) + x_l; W = U V^T when rank > 0."""
  rank: int = 0

  @nn.compact
  def __call__(self, x0: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    d = x.shape[-1]
    if self.rank:
      wx = nn.Dense(d, name="u")(nn.Dense(self.rank, use_bias=False,
                                          name="v")(x))
    else:
      wx = nn.Dense(d, name="w")(x)
    return x0 * wx + x


class MLP(nn.Module):
  widths: tuple[int, ...]

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    for i, w in enumerate(self.widths):
      x = nn.relu(nn.Dense(w, name=f"dense_{i}")(x))
    return x


class DCN(nn.Module):
  """Cross network and MLP in parallel over x0 -> their concatenation."""
  cross_layers: int
  cross_rank: int
  mlp: tuple[int, ...]

  @nn.compact
  def __call__(self, x0: jnp.ndarray) -> jnp.ndarray:
    x = x0
    for i in range(self.cross_layers):
      x = CrossLayer(self.cross_rank, name=f"cross_{i}")(x0, x)
    return jnp.concatenate([x, MLP(self.mlp, name="deep")(x0)], axis=-1)


def embedding_features(tables: dict, product: jnp.ndarray,
                       query: jnp.ndarray, history: jnp.ndarray
                       ) -> dict[str, jnp.ndarray]:
  """Gathers the tower's inputs from L2-normalised tables.

  Returns p, q (B, E), pool (B, E) the mean embedding of the history's
  products (0 without history), and derived (B, 3): cos(p, q),
  cos(p, pool) (0 without history), has-history.
  """
  p, q = tables["product"][product], tables["query"][query]
  mask = (history >= 0).astype(p.dtype)
  bought = tables["product"][jnp.maximum(history, 0)] * mask[..., None]
  count = mask.sum(-1, keepdims=True)
  pool = bought.sum(-2) / jnp.maximum(count, 1.0)
  pool_dir = pool / jnp.maximum(jnp.linalg.norm(pool, axis=-1,
                                                keepdims=True), 1e-6)
  derived = jnp.concatenate([(p * q).sum(-1, keepdims=True),
                             (p * pool_dir).sum(-1, keepdims=True),
                             (count > 0).astype(p.dtype)], axis=-1)
  return {"p": p, "q": q, "pool": pool, "derived": derived}


class EmbeddingInputs(nn.Module):
  """Projected p, q, pool (tower_dim each) and the derived features."""
  dim: int

  @nn.compact
  def __call__(self, feats: dict[str, jnp.ndarray]) -> jnp.ndarray:
    proj = [nn.Dense(self.dim, name=f"proj_{k}")(feats[k])
            for k in ("p", "q", "pool")]
    return jnp.concatenate(proj + [feats["derived"]], axis=-1)


class Ranker(nn.Module):
  config: RankerConfig

  @nn.compact
  def __call__(self, batch: dict, tables: dict | None = None) -> jnp.ndarray:
    c = self.config
    cat = batch["categorical"]
    x0 = [nn.Embed(n, c.embed_dim, name=f"embed_{name}")(cat[:, i])
          for i, (name, n) in enumerate(zip(features_lib.CATEGORICAL,
                                            c.vocab))]
    x0 = jnp.concatenate(x0 + [batch["numeric"]], axis=-1)
    emb = None
    if c.kind != "baseline":
      emb = EmbeddingInputs(c.tower_dim, name="embedding_inputs")(
          embedding_features(tables, batch["product"], batch["query"],
                             batch["history"]))
    if c.kind == "single":
      x0 = jnp.concatenate([x0, emb], axis=-1)
    h = DCN(c.cross_layers, c.cross_rank, c.mlp, name="dcn")(x0)
    if c.kind == "tower":
      h = jnp.concatenate([h, MLP(c.tower_mlp, name="tower")(emb)], axis=-1)
    h = MLP(c.head_mlp, name="head")(h)
    return nn.Dense(1, name="logit")(h)[:, 0]
