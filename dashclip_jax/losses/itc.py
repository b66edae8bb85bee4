"""ITC (stage 1): symmetric image-text InfoNCE over the global batch, with
BLIP's optional momentum distillation (queues of momentum features, soft
targets weighted by alpha, `alpha_ramp`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dashclip_jax.losses import masking
from dashclip_jax.losses import temperature

Array = jax.Array
Metrics = dict[str, Array]


def _soft_xent(logits: Array, targets: Array) -> Array:
  """Per-row cross-entropy with soft targets: (M, K), (M, K) -> (M,)."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def _positive_targets(ids: Array | None, col_ids: Array | None, b: int,
                      k: int, col_valid: Array | None = None) -> Array:
  """Row-normalised multi-positive targets (B, K).

  With instance ids, every column with the same id is a positive (BLIP
  retrieval variant); without, column i is the only positive of row i.
  Invalid columns (padding) are never positives, whatever their id: their
  logits are masked to NEG_INF, so a target there would cost ~1e9.
  """
  if ids is None:
    y = jnp.eye(b, k, dtype=jnp.float32)
  else:
    y = (ids[:, None] == col_ids[None, :]).astype(jnp.float32)
  if col_valid is not None:
    y = jnp.where(col_valid[None, :], y, 0.0)
  return y / jnp.maximum(jnp.sum(y, axis=1, keepdims=True), 1.0)


def itc_loss(
    img: Array,
    txt: Array,
    temp: Array,
    *,
    ids: Array | None = None,
    valid: Array | None = None,
    img_m: Array | None = None,
    txt_m: Array | None = None,
    img_queue: Array | None = None,
    txt_queue: Array | None = None,
    id_queue: Array | None = None,
    alpha: Array | float = 0.0,
) -> tuple[Array, Metrics]:
  """Symmetric InfoNCE (image->text and text->image), BLIP ITC.

  Args:
    img: (B, E) L2-normalised online image projections.
    txt: (B, E) L2-normalised online text projections.
    temp: scalar temperature; clamped to [0.001, 0.5]. Logits = cos / temp.
    ids: optional (B,) int instance/product ids. Pairs with equal ids are all
      positives (row-normalised targets), as BLIP_Retrieval's `idx`.
    valid: optional (B,) bool; False rows (padding of a ragged batch) are
      neither anchors nor negatives.
    img_m, txt_m: optional (B, E) momentum-encoder projections. When given,
      the targets/columns are the momentum features [in-batch | queue] and
      the soft targets are alpha * softmax(s_m) + (1 - alpha) * Y.
    img_queue, txt_queue: optional (Q, E) queued momentum features (rows).
    id_queue: optional (Q,) ids of the queued rows (-1 = never matches);
      required with `ids` when queues are used.
    alpha: distillation weight in [0, 1] (0 = hard targets only).

  Returns:
    (loss, metrics): loss = (L_i2t + L_t2i) / 2, a float32 scalar.
  """
  b = img.shape[0]
  if valid is not None:
    valid = valid.astype(bool)
  img = img.astype(jnp.float32)
  txt = txt.astype(jnp.float32)
  t = temperature.clamp_temp(temp)
  momentum = img_m is not None
  if momentum != (txt_m is not None):
    raise ValueError("itc_loss: give both img_m and txt_m, or neither.")
  if (img_queue is None) != (txt_queue is None):
    raise ValueError("itc_loss: give both img_queue and txt_queue, or neither.")
  if img_queue is not None and not momentum:
    raise ValueError("itc_loss: queues hold momentum features; pass img_m/txt_m.")

  # Columns: the (momentum) features of the batch, then the queue.
  img_cols = jax.lax.stop_gradient(img_m.astype(jnp.float32)) if momentum else img
  txt_cols = jax.lax.stop_gradient(txt_m.astype(jnp.float32)) if momentum else txt
  col_ids = ids
  col_valid = valid
  if img_queue is not None:
    img_cols = jnp.concatenate([img_cols, img_queue.astype(jnp.float32)], 0)
    txt_cols = jnp.concatenate([txt_cols, txt_queue.astype(jnp.float32)], 0)
    q = img_queue.shape[0]
    if ids is not None:
      if id_queue is None:
        raise ValueError("itc_loss: ids given with queues but no id_queue.")
      col_ids = jnp.concatenate([ids, id_queue.astype(ids.dtype)], 0)
    if valid is not None:
      col_valid = jnp.concatenate([valid, jnp.ones((q,), bool)], 0)
  k = img_cols.shape[0]

  s_i2t = img @ txt_cols.T / t  # (B, K)
  s_t2i = txt @ img_cols.T / t  # (B, K)
  y = _positive_targets(ids, col_ids, b, k, col_valid)
  if col_valid is not None:
    colmask = col_valid[None, :]
    s_i2t = jnp.where(colmask, s_i2t, masking.NEG_INF)
    s_t2i = jnp.where(colmask, s_t2i, masking.NEG_INF)
  if momentum:
    tsg = jax.lax.stop_gradient(t)
    s_i2t_m = jax.lax.stop_gradient(img_m.astype(jnp.float32)) @ txt_cols.T / tsg
    s_t2i_m = jax.lax.stop_gradient(txt_m.astype(jnp.float32)) @ img_cols.T / tsg
    if col_valid is not None:
      s_i2t_m = jnp.where(colmask, s_i2t_m, masking.NEG_INF)
      s_t2i_m = jnp.where(colmask, s_t2i_m, masking.NEG_INF)
    alpha = jnp.asarray(alpha, jnp.float32)
    tgt_i2t = alpha * jax.nn.softmax(s_i2t_m, -1) + (1 - alpha) * y
    tgt_t2i = alpha * jax.nn.softmax(s_t2i_m, -1) + (1 - alpha) * y
    tgt_i2t = jax.lax.stop_gradient(tgt_i2t)
    tgt_t2i = jax.lax.stop_gradient(tgt_t2i)
  else:
    tgt_i2t = tgt_t2i = y
  l_i2t = masking.weighted_mean(_soft_xent(s_i2t, tgt_i2t), valid)
  l_t2i = masking.weighted_mean(_soft_xent(s_t2i, tgt_t2i), valid)
  loss = 0.5 * (l_i2t + l_t2i)
  # Top-1 retrieval accuracy against the positives (any column with Y > 0).
  acc = masking.weighted_mean(
      (jnp.take_along_axis(y, jnp.argmax(s_i2t, -1)[:, None], 1)[:, 0] > 0
       ).astype(jnp.float32), valid)
  return loss, {"itc_loss": loss, "itc_i2t": l_i2t, "itc_t2i": l_t2i,
                "itc_acc": acc, "temp": t}


def alpha_ramp(step: Array | int, ramp_steps: int,
               alpha_max: float = 0.4) -> Array:
  """BLIP's distillation weight: linear from 0 to alpha_max over ramp_steps.

  Pretraining ramps over 2 epochs, retrieval over 1 (BLIP_REFERENCE §4.1);
  `ramp_steps <= 0` means no ramp (alpha_max from step 0).
  """
  step = jnp.asarray(step, jnp.float32)
  if ramp_steps <= 0:
    return jnp.asarray(alpha_max, jnp.float32)
  return alpha_max * jnp.minimum(1.0, step / ramp_steps)
