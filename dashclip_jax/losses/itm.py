"""ITM (stage 1): hard negatives sampled over the global batch, and the
match / no-match cross-entropy on positives and both kinds of negatives."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dashclip_jax.losses import masking

Array = jax.Array
Metrics = dict[str, Array]


def sample_hard_negatives(
    rng: Array, sim_i2t: Array, ids: Array | None = None,
    valid: Array | None = None) -> tuple[Array, Array, Array, Array]:
  """BLIP ITM hard negatives over the global batch (no grad).

  For each image i a negative text ~ softmax(sim_i2t[i]) and for each text j
  a negative image ~ softmax(sim_i2t[:, j]), with the positive and every pair
  sharing an id masked out. Sampling is `jax.random.categorical` on the
  global (B, B) matrix: with jax's partitionable threefry (default) the draw
  depends only on `rng`, not on how the batch is sharded.

  Args:
    rng: PRNG key.
    sim_i2t: (B, B) image-to-text similarities (any scale, typically cos/temp).
    ids: optional (B,) product ids; equal ids are never negatives of each other.
    valid: optional (B,) bool, padding rows are never sampled.

  Returns:
    neg_txt_for_img (B,) int32, neg_img_for_txt (B,) int32, and their (B,)
    bool validity: False when a row had no admissible negative (all pairs in
    the batch share its id); that pair must be dropped from the ITM loss.
  """
  b = sim_i2t.shape[0]
  sim = jax.lax.stop_gradient(sim_i2t).astype(jnp.float32)
  same = jnp.eye(b, dtype=bool)
  if ids is not None:
    same = same | (ids[:, None] == ids[None, :])
  allowed = ~same
  if valid is not None:
    valid = valid.astype(bool)
    allowed = allowed & valid[:, None] & valid[None, :]
  k_t, k_i = jax.random.split(rng)
  logit_i2t = jnp.where(allowed, sim, masking.NEG_INF)
  logit_t2i = jnp.where(allowed.T, sim.T, masking.NEG_INF)
  neg_txt = jax.random.categorical(k_t, logit_i2t, axis=-1).astype(jnp.int32)
  neg_img = jax.random.categorical(k_i, logit_t2i, axis=-1).astype(jnp.int32)
  return neg_txt, neg_img, jnp.any(allowed, 1), jnp.any(allowed.T, 1)


def itm_loss(logits: Array, weights: Array | None = None) -> tuple[Array, Metrics]:
  """BLIP ITM cross-entropy on 3B pairs: [positives; (txt, neg img); (neg txt, img)].

  Args:
    logits: (3B, 2), class 1 = match. Rows 0..B-1 are the positive pairs,
      B..2B-1 (text b, hard image), 2B..3B-1 (hard text, image b).
    weights: optional (3B,) float/bool row weights (0 drops a pair: padding
      or a row without an admissible negative).

  Returns:
    (loss, metrics) with labels [1]*B + [0]*2B.
  """
  n = logits.shape[0]
  if n % 3 or logits.shape[1:] != (2,):
    raise ValueError(f"itm_loss: logits must be (3B, 2), got {logits.shape}.")
  b = n // 3
  labels = jnp.concatenate([jnp.ones((b,), jnp.int32),
                            jnp.zeros((2 * b,), jnp.int32)])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(logp, labels[:, None], 1)[:, 0]
  loss = masking.weighted_mean(nll, weights)
  acc = masking.weighted_mean(
      (jnp.argmax(logits, -1) == labels).astype(jnp.float32), weights)
  return loss, {"itm_loss": loss, "itm_acc": acc}
