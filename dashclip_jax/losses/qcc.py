"""QCC (stage 2): the query-catalog contrastive loss, product -> query over
in-batch and mined negatives, with known-relevant pairs never negatives."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dashclip_jax.losses import masking
from dashclip_jax.losses import temperature

Array = jax.Array
Metrics = dict[str, Array]


def false_negative_mask(product_ids: Array, relevant_ids: Array | None) -> Array:
  """(B, B) bool, [i, j] True if query j must not be a negative of product i.

  That is: same product (i == j included), or product i is listed among the
  products known relevant to query j (relevant_ids (B, R), -1 padding).
  """
  m = product_ids[:, None] == product_ids[None, :]
  if relevant_ids is not None:
    rel = (product_ids[:, None, None] == relevant_ids[None, :, :]) & (
        relevant_ids[None, :, :] >= 0)
    m = m | jnp.any(rel, axis=-1)
  return m


def qcc_loss(
    product: Array,
    query: Array,
    temp: Array,
    product_ids: Array,
    *,
    neg_query: Array | None = None,
    neg_valid: Array | None = None,
    relevant_ids: Array | None = None,
    weights: Array | None = None,
    valid: Array | None = None,
    symmetric: bool = False,
    hard_k: int | None = None,
) -> tuple[Array, Metrics]:
  """Query-catalog contrastive loss (DashCLIP stage 2).

  For product i with embedding C_i, positive query Q_i and negatives Q_ij:
    L = -sum_i w_i log(e^{s(C_i,Q_i)/t} / (e^{s(C_i,Q_i)/t} + sum_j e^{s(C_i,Q_ij)/t}))
        / sum_i w_i,
  s = cosine (inputs are L2-normalised). Negatives of product i: the
  in-batch queries j of other products that are not known relevant to i
  (`false_negative_mask`), optionally only the `hard_k` most similar of
  them, plus its mined negatives neg_query[i] (label-0 queries) where valid.

  Args:
    product: (B, E) normalised product (multimodal) embeddings C.
    query: (B, E) normalised positive query embeddings, row i pairs with C_i.
    temp: scalar temperature (clamped to [0.001, 0.5]).
    product_ids: (B,) int product ids.
    neg_query: optional (B, N, E) normalised mined negative queries.
    neg_valid: optional (B, N) bool validity of neg_query rows.
    relevant_ids: optional (B, R) int, products known relevant to query i
      (-1 padded); used for false-negative masking.
    weights: optional (B,) pair weights, e.g. `label_weights(...)` (0 drops a
      pair as anchor; its query is still a negative for other products).
    valid: optional (B,) bool; False rows (padding, or pairs a label policy
      excludes: `label_valid`) are neither anchors nor negatives, as if they
      were not in the batch.
    symmetric: also add the query->product term over in-batch products and
      average the two directions.
    hard_k: keep only the k hardest admissible in-batch negatives per row
      (static int), None = all.

  Returns:
    (loss, metrics).
  """
  b = product.shape[0]
  c = product.astype(jnp.float32)
  q = query.astype(jnp.float32)
  t = temperature.clamp_temp(temp)
  fn = false_negative_mask(product_ids, relevant_ids)  # (B, B)
  eye = jnp.eye(b, dtype=bool)
  s = c @ q.T / t  # (B, B) product i vs query j
  neg_ok = ~fn
  if valid is not None:
    valid = valid.astype(bool)
    neg_ok = neg_ok & valid[None, :]  # Before hard_k: never a hardest negative.
    weights = valid if weights is None else jnp.where(valid, weights, 0.0)
  if hard_k is not None and hard_k < b - 1:
    masked = jnp.where(neg_ok, jax.lax.stop_gradient(s), -jnp.inf)
    kth = jax.lax.top_k(masked, hard_k)[0][:, -1:]
    neg_ok = neg_ok & (masked >= kth)
  s_inb = jnp.where(eye | neg_ok, s, masking.NEG_INF)
  cols = [s_inb]
  if neg_query is not None:
    if neg_query.shape[0] != b or neg_query.shape[-1] != c.shape[-1]:
      raise ValueError(
          f"qcc_loss: neg_query {neg_query.shape} vs product {product.shape}.")
    s_mined = jnp.einsum("be,bne->bn", c, neg_query.astype(jnp.float32)) / t
    if neg_valid is not None:
      s_mined = jnp.where(neg_valid, s_mined, masking.NEG_INF)
    cols.append(s_mined)
  logits = jnp.concatenate(cols, axis=1)  # (B, B [+ N]); positive at col i.
  pos = jnp.diagonal(s)
  nll_p2q = jax.nn.logsumexp(logits, axis=1) - pos
  l_p2q = masking.weighted_mean(nll_p2q, weights)
  metrics = {"qcc_p2q": l_p2q,
             "qcc_acc": masking.weighted_mean(
                 (jnp.argmax(logits, 1) == jnp.arange(b)).astype(jnp.float32),
                 weights),
             "qcc_num_neg": masking.weighted_mean(
                 jnp.sum(logits > masking.NEG_INF / 2, 1) - 1.0, valid),
             "temp": t}
  loss = l_p2q
  if symmetric:
    # Query i vs in-batch products j: product j is a false negative of query
    # i when fn[j, i] (same product, or known relevant to query i).
    q_neg_ok = ~fn.T if valid is None else ~fn.T & valid[None, :]
    s_q = jnp.where(eye | q_neg_ok, s.T, masking.NEG_INF)
    nll_q2p = jax.nn.logsumexp(s_q, axis=1) - pos
    l_q2p = masking.weighted_mean(nll_q2p, weights)
    metrics["qcc_q2p"] = l_q2p
    loss = 0.5 * (l_p2q + l_q2p)
  metrics["qcc_loss"] = loss
  return loss, metrics
