"""Contrastive and matching losses for DashCLIP stage 1 (ITC, ITM) and 2 (QCC).

Every function here is pure: embeddings, temperature and masks in, `(loss,
metrics)` out, no config and no globals. Inputs are *global* arrays: under
`jax.jit` with a batch sharded over the mesh, XLA inserts the gathers, so the
negatives are the whole global batch on any mesh shape (unlike BLIP's
per-rank in-batch ITC, see BLIP_REFERENCE §4.1).

Notation: B batch, E embedding dim, Q queue length, N mined negatives per
product, R relevant product ids per query (padded with -1).

Losses are computed in float32 whatever the compute dtype of the encoders.
"""

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, Array]

TEMP_MIN = 0.001
TEMP_MAX = 0.5
# Large negative used instead of -inf for masked logits: keeps softmax and its
# gradient finite when a row happens to be fully masked.
NEG_INF = -1e9


def clamp_temp(temp: Array) -> Array:
  """BLIP clamps `temp` to [0.001, 0.5] in place, *without* stopping its grad.

  We reproduce that with a straight-through clamp: the forward value is
  clamped, the gradient flows as if it were not (BLIP's optimiser sees the
  grad of the clamped value). The train step also clamps the parameter after
  each update, which is what BLIP's in-place clamp amounts to.
  """
  temp = jnp.asarray(temp, jnp.float32)
  return temp + jax.lax.stop_gradient(jnp.clip(temp, TEMP_MIN, TEMP_MAX) - temp)


def _soft_xent(logits: Array, targets: Array) -> Array:
  """Per-row cross-entropy with soft targets: (M, K), (M, K) -> (M,)."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def _weighted_mean(x: Array, w: Array | None) -> Array:
  if w is None:
    return jnp.mean(x)
  w = w.astype(jnp.float32)
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1e-12)


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
  t = clamp_temp(temp)
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
    s_i2t = jnp.where(colmask, s_i2t, NEG_INF)
    s_t2i = jnp.where(colmask, s_t2i, NEG_INF)
  if momentum:
    tsg = jax.lax.stop_gradient(t)
    s_i2t_m = jax.lax.stop_gradient(img_m.astype(jnp.float32)) @ txt_cols.T / tsg
    s_t2i_m = jax.lax.stop_gradient(txt_m.astype(jnp.float32)) @ img_cols.T / tsg
    if col_valid is not None:
      s_i2t_m = jnp.where(colmask, s_i2t_m, NEG_INF)
      s_t2i_m = jnp.where(colmask, s_t2i_m, NEG_INF)
    alpha = jnp.asarray(alpha, jnp.float32)
    tgt_i2t = alpha * jax.nn.softmax(s_i2t_m, -1) + (1 - alpha) * y
    tgt_t2i = alpha * jax.nn.softmax(s_t2i_m, -1) + (1 - alpha) * y
    tgt_i2t = jax.lax.stop_gradient(tgt_i2t)
    tgt_t2i = jax.lax.stop_gradient(tgt_t2i)
  else:
    tgt_i2t = tgt_t2i = y
  l_i2t = _weighted_mean(_soft_xent(s_i2t, tgt_i2t), valid)
  l_t2i = _weighted_mean(_soft_xent(s_t2i, tgt_t2i), valid)
  loss = 0.5 * (l_i2t + l_t2i)
  # Top-1 retrieval accuracy against the positives (any column with Y > 0).
  acc = _weighted_mean(
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


def init_queue(rng: Array, size: int, dim: int) -> dict[str, Array]:
  """Fresh feature queues: random unit rows (as BLIP), ids -1, pointer 0.

  Returns {"img": (Q, E), "txt": (Q, E), "ids": (Q,) int32, "ptr": () int32}.
  """
  k1, k2 = jax.random.split(rng)
  def unit(k):
    x = jax.random.normal(k, (size, dim), jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  return {"img": unit(k1), "txt": unit(k2),
          "ids": jnp.full((size,), -1, jnp.int32),
          "ptr": jnp.zeros((), jnp.int32)}


def enqueue(queue: Array, ptr: Array, new: Array,
            valid: Array | None = None) -> tuple[Array, Array]:
  """Writes the global batch `new` into a ring buffer, in batch order.

  Rows of `new` go to rows ptr, ptr+1, ... (mod Q) of `queue`, i.e. the
  global batch in its order whatever the mesh (the input is a global array).
  Ragged final batch: rows with valid=False are skipped (not written) and the
  pointer advances by the number of *real* rows, wrapping around; the valid
  rows must be a prefix-free subset, any order is fine, they are packed in
  batch order. Unlike BLIP we do not require Q % B == 0, only B <= Q.

  Args:
    queue: (Q, ...) ring buffer.
    ptr: () int32 next row to write.
    new: (B, ...) rows to enqueue, same trailing shape and dtype-castable.
    valid: optional (B,) bool.

  Returns:
    (new_queue, new_ptr).
  """
  q, b = queue.shape[0], new.shape[0]
  if b > q:
    raise ValueError(f"enqueue: batch {b} larger than queue {q}.")
  if new.shape[1:] != queue.shape[1:]:
    raise ValueError(f"enqueue: rows {new.shape} do not fit queue {queue.shape}.")
  valid = jnp.ones((b,), bool) if valid is None else valid.astype(bool)
  offs = jnp.cumsum(valid.astype(jnp.int32)) - 1
  idx = jnp.where(valid, (ptr + offs) % q, q)  # q = out of range -> dropped
  queue = queue.at[idx].set(jax.lax.stop_gradient(new).astype(queue.dtype),
                            mode="drop")
  count = jnp.sum(valid.astype(jnp.int32))
  return queue, ((ptr + count) % q).astype(ptr.dtype)


def ema_update(params_m: Any, params: Any, momentum: float = 0.995) -> Any:
  """theta_m <- m * theta_m + (1 - m) * theta, leaf by leaf (no grad)."""
  return jax.tree.map(
      lambda pm, p: (momentum * pm + (1.0 - momentum)
                     * jax.lax.stop_gradient(p).astype(pm.dtype)),
      params_m, params)


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
  logit_i2t = jnp.where(allowed, sim, NEG_INF)
  logit_t2i = jnp.where(allowed.T, sim.T, NEG_INF)
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
  loss = _weighted_mean(nll, weights)
  acc = _weighted_mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32),
                       weights)
  return loss, {"itm_loss": loss, "itm_acc": acc}


# Graded relevance (2 high, 1 moderate, 0 irrelevant): what is a label-1
# query-product pair in stage 2? Default "weighted" with weight 0.5: label-1
# pairs are relevant (they earn gain in the NDCG we evaluate with), so
# dropping them wastes data, but a full positive would teach the model that
# a missed constraint costs nothing. Half weight keeps the pull, ranks 2 > 1.
# "exclude" means one thing wherever it is set: label-1 pairs are no
# training pairs, neither anchors nor in-batch negatives, exactly as if the
# data pipeline had dropped them (data.relevance.stage2_pairs does). A
# weight-0 row kept as a negative would spend a batch slot on a pair whose
# product is relevant to its query, and would be a fourth policy that
# `data.label1_policy` cannot express. Either way a label-1 product is never
# a negative of its own query (relevant_product_ids).
LABEL_POLICIES = ("positive", "weighted", "exclude")
DEFAULT_LABEL_POLICY = "weighted"
DEFAULT_PARTIAL_WEIGHT = 0.5


def label_weights(labels: Array, policy: str = DEFAULT_LABEL_POLICY,
                  partial_weight: float = DEFAULT_PARTIAL_WEIGHT) -> Array:
  """Per-pair loss weight from graded labels (B,) in {0, 1, 2}.

  label 2 -> 1.0; label 1 -> 1.0 ("positive"), `partial_weight`
  ("weighted") or 0.0 ("exclude"); label 0 (or padding, < 0) -> 0.0.
  Rows with weight 0 here are no training pairs: pass `label_valid` as
  `qcc_loss(valid=...)` too, so they are not negatives either.
  """
  if policy not in LABEL_POLICIES:
    raise ValueError(f"label policy {policy!r} not in {LABEL_POLICIES}.")
  w1 = {"positive": 1.0, "weighted": partial_weight, "exclude": 0.0}[policy]
  labels = jnp.asarray(labels)
  return jnp.where(labels >= 2, 1.0, jnp.where(labels == 1, w1, 0.0)).astype(
      jnp.float32)


def label_valid(labels: Array, policy: str = DEFAULT_LABEL_POLICY) -> Array:
  """(B,) bool: which rows are training pairs under `policy`.

  Label 2 always; label 1 unless "exclude"; label 0 and padding (< 0) never
  (the pipeline's pairs are label 1 or 2; label-0 queries are the mined
  negatives).
  """
  if policy not in LABEL_POLICIES:
    raise ValueError(f"label policy {policy!r} not in {LABEL_POLICIES}.")
  labels = jnp.asarray(labels)
  return labels >= (2 if policy == "exclude" else 1)


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
  t = clamp_temp(temp)
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
  s_inb = jnp.where(eye | neg_ok, s, NEG_INF)
  cols = [s_inb]
  if neg_query is not None:
    if neg_query.shape[0] != b or neg_query.shape[-1] != c.shape[-1]:
      raise ValueError(
          f"qcc_loss: neg_query {neg_query.shape} vs product {product.shape}.")
    s_mined = jnp.einsum("be,bne->bn", c, neg_query.astype(jnp.float32)) / t
    if neg_valid is not None:
      s_mined = jnp.where(neg_valid, s_mined, NEG_INF)
    cols.append(s_mined)
  logits = jnp.concatenate(cols, axis=1)  # (B, B [+ N]); positive at col i.
  pos = jnp.diagonal(s)
  nll_p2q = jax.nn.logsumexp(logits, axis=1) - pos
  l_p2q = _weighted_mean(nll_p2q, weights)
  metrics = {"qcc_p2q": l_p2q,
             "qcc_acc": _weighted_mean(
                 (jnp.argmax(logits, 1) == jnp.arange(b)).astype(jnp.float32),
                 weights),
             "qcc_num_neg": _weighted_mean(
                 jnp.sum(logits > NEG_INF / 2, 1) - 1.0, valid),
             "temp": t}
  loss = l_p2q
  if symmetric:
    # Query i vs in-batch products j: product j is a false negative of query
    # i when fn[j, i] (same product, or known relevant to query i).
    q_neg_ok = ~fn.T if valid is None else ~fn.T & valid[None, :]
    s_q = jnp.where(eye | q_neg_ok, s.T, NEG_INF)
    nll_q2p = jax.nn.logsumexp(s_q, axis=1) - pos
    l_q2p = _weighted_mean(nll_q2p, weights)
    metrics["qcc_q2p"] = l_q2p
    loss = 0.5 * (l_p2q + l_q2p)
  metrics["qcc_loss"] = loss
  return loss, metrics
