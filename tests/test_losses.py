"""Losses vs plain NumPy references written independently, loop by loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dashclip_jax import losses

RTOL = 1e-5
ATOL = 1e-5


def _unit(rng, *shape):
  x = rng.standard_normal(shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def _softmax(x):
  return np.exp(_log_softmax(x))


def np_itc(img, txt, temp, ids=None, valid=None, img_m=None, txt_m=None,
           img_q=None, txt_q=None, id_q=None, alpha=0.0):
  """BLIP ITC, one row at a time."""
  temp = min(max(temp, 0.001), 0.5)
  b = img.shape[0]
  momentum = img_m is not None
  icol = img_m if momentum else img
  tcol = txt_m if momentum else txt
  cid = ids
  cval = valid
  if img_q is not None:
    icol = np.concatenate([icol, img_q])
    tcol = np.concatenate([tcol, txt_q])
    if ids is not None:
      cid = np.concatenate([ids, id_q])
    if valid is not None:
      cval = np.concatenate([valid, np.ones(len(img_q), bool)])
  k = icol.shape[0]
  losses_ = []
  for a, cols, am in ((img, tcol, img_m), (txt, icol, txt_m)):
    tot, wsum = 0.0, 0.0
    for i in range(b):
      if valid is not None and not valid[i]:
        continue
      keep = np.ones(k, bool) if cval is None else cval
      logits = (a[i] @ cols.T / temp)[keep]
      if ids is None:
        y = np.zeros(k)
        y[i] = 1
      else:
        y = (cid == ids[i]).astype(float)
      # Positives among the columns that exist (padding columns never count).
      y = y[keep]
      y /= y.sum()
      if momentum:
        y = alpha * _softmax((am[i] @ cols.T / temp)[keep]) + (1 - alpha) * y
      tot += -(y * _log_softmax(logits)).sum()
      wsum += 1
    losses_.append(tot / wsum)
  return 0.5 * (losses_[0] + losses_[1])


@pytest.mark.parametrize("case", ["plain", "ids", "valid", "momentum_queue",
                                  "momentum_queue_ids_valid", "temp_clamped",
                                  "ids_valid_collide",
                                  "momentum_queue_ids_valid_collide"])
def test_itc_matches_numpy(case):
  rng = np.random.default_rng(0)
  b, e, q = 6, 8, 10
  img, txt = _unit(rng, b, e), _unit(rng, b, e)
  kw, npkw = {}, {}
  temp = 0.07
  if case == "temp_clamped":
    temp = 0.0001  # below 0.001: must be clamped like BLIP
  if "ids" in case:
    ids = np.array([3, 1, 3, 2, 1, 7], np.int32)
    kw["ids"] = npkw["ids"] = ids
  if "valid" in case:
    valid = np.array([1, 1, 1, 0, 1, 0], bool)
    kw["valid"] = npkw["valid"] = valid
  if "collide" in case:  # Padding rows 3 and 5 carry real rows' ids.
    kw["ids"] = npkw["ids"] = np.array([3, 1, 3, 1, 1, 3], np.int32)
  if "momentum" in case:
    img_m, txt_m = _unit(rng, b, e), _unit(rng, b, e)
    img_q, txt_q = _unit(rng, q, e), _unit(rng, q, e)
    id_q = np.array([3, -1, 2, 9, 9, -1, 1, 0, 0, 5], np.int32)
    kw.update(img_m=img_m, txt_m=txt_m, img_queue=img_q, txt_queue=txt_q,
              alpha=0.3)
    npkw.update(img_m=img_m, txt_m=txt_m, img_q=img_q, txt_q=txt_q, alpha=0.3)
    if "ids" in case:
      kw["id_queue"] = npkw["id_q"] = id_q
  loss, metrics = jax.jit(lambda *a: losses.itc_loss(*a, **kw))(img, txt, temp)
  want = np_itc(img, txt, temp, **npkw)
  np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
  assert metrics["temp"] == pytest.approx(min(max(temp, 0.001), 0.5))


@pytest.mark.parametrize("momentum", [False, True])
def test_itc_padding_rows_equal_the_batch_without_them(momentum):
  """Padding rows whose ids equal real rows' ids: loss and gradients equal
  those of the same batch without the padding rows (a positive target on a
  masked column gave a loss of ~1e8 here)."""
  rng = np.random.default_rng(7)
  b, e, q = 6, 8, 10
  real = np.array([1, 1, 1, 0, 1, 0], bool)
  ids = np.array([3, 1, 3, 1, 2, 3], np.int32)  # Padding ids 1, 3: real ones.
  img, txt = _unit(rng, b, e), _unit(rng, b, e)
  kw = {}
  if momentum:
    kw = dict(img_m=_unit(rng, b, e), txt_m=_unit(rng, b, e),
              img_queue=_unit(rng, q, e), txt_queue=_unit(rng, q, e),
              id_queue=np.array([3, -1, 2, 9, 9, -1, 1, 0, 0, 5], np.int32),
              alpha=0.3)

  def loss(img, txt, temp, ids, valid, **kw):
    return losses.itc_loss(img, txt, temp, ids=ids, valid=valid, **kw)[0]

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  got, (g_img, g_txt, g_t) = grad(img, txt, 0.07, ids, real, **kw)
  sub = {k: (v[real] if k in ("img_m", "txt_m") else v) for k, v in kw.items()}
  want, (w_img, w_txt, w_t) = grad(img[real], txt[real], 0.07, ids[real],
                                   None, **sub)
  assert float(want) < 100  # A sane loss: the reference is not broken too.
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(g_img[real], w_img, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g_txt[real], w_txt, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g_t, w_t, rtol=1e-4, atol=1e-6)
  assert not np.asarray(g_img[~real]).any()  # Padding gets no gradient.
  assert not np.asarray(g_txt[~real]).any()


def test_temp_clamp_passes_gradient_like_blip():
  # BLIP clamps the value in place but keeps the grad of the clamped tensor.
  g = jax.grad(lambda t: losses.clamp_temp(t) * 2.0)(0.9)
  assert float(g) == 2.0
  assert float(losses.clamp_temp(0.9)) == 0.5


def test_alpha_ramp():
  assert float(losses.alpha_ramp(0, 100)) == 0.0
  assert float(losses.alpha_ramp(50, 100)) == pytest.approx(0.2)
  assert float(losses.alpha_ramp(500, 100)) == pytest.approx(0.4)
  assert float(losses.alpha_ramp(3, 0, 0.4)) == pytest.approx(0.4)


def test_enqueue_ring_buffer_and_ragged_batch():
  q, e = 7, 3
  queue = np.zeros((q, e), np.float32)
  ref = queue.copy()
  ptr, ref_ptr = jnp.int32(0), 0
  enq = jax.jit(losses.enqueue)
  rng = np.random.default_rng(1)
  for step in range(5):
    new = rng.standard_normal((4, e)).astype(np.float32)
    valid = np.array([1, 1, 1, 1], bool) if step < 4 else np.array([1, 0, 1, 0], bool)
    queue, ptr = enq(queue, ptr, new, valid)
    for row in new[valid]:  # reference: one row at a time, wrap at q
      ref[ref_ptr] = row
      ref_ptr = (ref_ptr + 1) % q
    np.testing.assert_array_equal(queue, ref)
    assert int(ptr) == ref_ptr


def test_enqueue_rejects_batch_larger_than_queue():
  with pytest.raises(ValueError, match="larger than queue"):
    losses.enqueue(jnp.zeros((3, 2)), jnp.int32(0), jnp.zeros((4, 2)))


def test_ema_update():
  pm = {"a": jnp.ones((2,)), "b": {"c": jnp.zeros(())}}
  p = {"a": jnp.full((2,), 3.0), "b": {"c": jnp.ones(())}}
  out = losses.ema_update(pm, p, 0.9)
  np.testing.assert_allclose(out["a"], 0.9 + 0.1 * 3.0, rtol=1e-6)
  np.testing.assert_allclose(out["b"]["c"], 0.1, rtol=1e-6)


def test_hard_negatives_respect_masks_and_match_softmax():
  b = 6
  rng = np.random.default_rng(2)
  sim = rng.standard_normal((b, b)).astype(np.float32) * 2
  ids = np.array([0, 1, 0, 2, 3, 4], np.int32)  # 0 and 2 share a product
  fn = jax.jit(jax.vmap(losses.sample_hard_negatives, (0, None, None)))
  keys = jax.random.split(jax.random.key(0), 4000)
  neg_txt, neg_img, ok_t, ok_i = fn(keys, sim, ids)
  assert bool(ok_t.all()) and bool(ok_i.all())
  same = ids[:, None] == ids[None, :]
  neg_txt, neg_img = np.asarray(neg_txt), np.asarray(neg_img)
  for i in range(b):
    assert not same[i, neg_txt[:, i]].any()
    assert not same[i, neg_img[:, i]].any()
    # Empirical frequencies follow softmax over the admissible columns.
    for draws, row in ((neg_txt[:, i], sim[i]), (neg_img[:, i], sim[:, i])):
      p = np.where(same[i], 0.0, np.exp(row - row.max()))
      p /= p.sum()
      freq = np.bincount(draws, minlength=b) / len(draws)
      np.testing.assert_allclose(freq, p, atol=0.03)
  # Deterministic given the key.
  a = losses.sample_hard_negatives(keys[0], sim, ids)
  c = losses.sample_hard_negatives(keys[0], sim, ids)
  for x, y in zip(a, c):
    np.testing.assert_array_equal(x, y)


def test_hard_negatives_ignore_padding_rows_with_real_ids():
  """Padding rows (ids equal to real rows' ids) are never drawn and draw
  nothing: the real rows' negatives follow the softmax of the batch
  without the padding rows."""
  rng = np.random.default_rng(8)
  sim = rng.standard_normal((6, 6)).astype(np.float32) * 2
  ids = np.array([0, 1, 0, 1, 2, 2], np.int32)
  valid = np.array([1, 1, 1, 0, 1, 0], bool)  # Padding ids 1, 2: real ones.
  fn = jax.jit(jax.vmap(losses.sample_hard_negatives, (0, None, None, None)))
  keys = jax.random.split(jax.random.key(1), 4000)
  neg_txt, neg_img, ok_t, ok_i = map(np.asarray, fn(keys, sim, ids, valid))
  np.testing.assert_array_equal(ok_t[0], valid)
  np.testing.assert_array_equal(ok_i[0], valid)
  real = np.flatnonzero(valid)
  sub, sub_ids = sim[np.ix_(real, real)], ids[real]
  for r, i in enumerate(real):
    for draws, row in ((neg_txt[:, i], sub[r]), (neg_img[:, i], sub[:, r])):
      p = np.where(sub_ids == sub_ids[r], 0.0, np.exp(row - row.max()))
      want = np.zeros(6)
      want[real] = p / p.sum()
      freq = np.bincount(draws, minlength=6) / len(draws)
      np.testing.assert_allclose(freq, want, atol=0.03)


def test_hard_negatives_flag_rows_without_negative():
  sim = jnp.zeros((3, 3))
  ids = jnp.array([5, 5, 5])
  _, _, ok_t, ok_i = losses.sample_hard_negatives(jax.random.key(0), sim, ids)
  assert not bool(ok_t.any()) and not bool(ok_i.any())


def test_itm_loss_matches_numpy():
  rng = np.random.default_rng(3)
  b = 4
  logits = rng.standard_normal((3 * b, 2)).astype(np.float32)
  w = rng.uniform(size=3 * b).astype(np.float32)
  w[5] = 0
  labels = np.array([1] * b + [0] * 2 * b)
  nll = np.array([-_log_softmax(l)[y] for l, y in zip(logits, labels)])
  got, _ = losses.itm_loss(logits)
  np.testing.assert_allclose(got, nll.mean(), rtol=RTOL)
  got, _ = losses.itm_loss(logits, w)
  np.testing.assert_allclose(got, (nll * w).sum() / w.sum(), rtol=RTOL)


def np_qcc(c, q, temp, pid, neg=None, neg_valid=None, rel=None, w=None,
           symmetric=False, hard_k=None):
  temp = min(max(temp, 0.001), 0.5)
  b = c.shape[0]
  w = np.ones(b) if w is None else w

  def is_fn(i, j):  # query j must not be a negative of product i
    if pid[i] == pid[j]:
      return True
    return rel is not None and pid[i] in [r for r in rel[j] if r >= 0]

  tot = 0.0
  for i in range(b):
    pos = c[i] @ q[i] / temp
    negs = [(c[i] @ q[j] / temp) for j in range(b) if j != i and not is_fn(i, j)]
    if hard_k is not None:
      negs = sorted(negs)[::-1][:hard_k]
    if neg is not None:
      negs += [c[i] @ neg[i, n] / temp for n in range(neg.shape[1])
               if neg_valid is None or neg_valid[i, n]]
    z = np.array([pos] + negs)
    tot += w[i] * -_log_softmax(z)[0]
  l_p2q = tot / w.sum()
  if not symmetric:
    return l_p2q
  tot = 0.0
  for i in range(b):
    pos = q[i] @ c[i] / temp
    negs = [q[i] @ c[j] / temp for j in range(b) if j != i and not is_fn(j, i)]
    tot += w[i] * -_log_softmax(np.array([pos] + negs))[0]
  return 0.5 * (l_p2q + tot / w.sum())


@pytest.mark.parametrize("policy", losses.LABEL_POLICIES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("hard_k", [None, 2])
def test_qcc_matches_numpy(policy, symmetric, hard_k):
  rng = np.random.default_rng(4)
  b, n, e = 7, 3, 8
  c, q = _unit(rng, b, e), _unit(rng, b, e)
  neg = _unit(rng, b, n, e)
  neg_valid = rng.uniform(size=(b, n)) > 0.3
  pid = np.array([10, 11, 12, 10, 13, 14, 15], np.int32)  # 0 and 3 same product
  rel = np.array([[12, -1], [-1, -1], [13, 14], [-1, -1], [-1, -1], [10, -1],
                  [-1, -1]], np.int32)  # query 0 is also relevant to product 12...
  labels = np.array([2, 1, 2, 1, 2, 2, 1])
  w = np.asarray(losses.label_weights(labels, policy))
  want_w = {"positive": [1, 1, 1, 1, 1, 1, 1],
            "weighted": [1, .5, 1, .5, 1, 1, .5],
            "exclude": [1, 0, 1, 0, 1, 1, 0]}[policy]
  np.testing.assert_allclose(w, want_w)
  v = np.asarray(losses.label_valid(labels, policy))
  np.testing.assert_array_equal(v, labels >= (2 if policy == "exclude" else 1))
  fn = jax.jit(lambda *a: losses.qcc_loss(
      *a, neg_query=neg, neg_valid=neg_valid, relevant_ids=rel, weights=w,
      valid=v, symmetric=symmetric, hard_k=hard_k))
  loss, _ = fn(c, q, 0.05, pid)
  # "exclude": label-1 pairs are no training pairs, neither anchors nor
  # negatives, as when the data pipeline drops them (stage2_pairs): the
  # reference is the batch without them.
  want = np_qcc(c[v], q[v], 0.05, pid[v], neg[v], neg_valid[v], rel[v], w[v],
                symmetric, hard_k)
  np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)


def test_qcc_false_negative_mask_changes_loss():
  # A known-relevant in-batch query must not count as a negative.
  rng = np.random.default_rng(5)
  c, q = _unit(rng, 3, 4), _unit(rng, 3, 4)
  pid = np.array([1, 2, 3], np.int32)
  rel = np.array([[2], [-1], [-1]], np.int32)  # query 0 relevant to product 2
  with_m, _ = losses.qcc_loss(c, q, 0.1, pid, relevant_ids=rel)
  without, _ = losses.qcc_loss(c, q, 0.1, pid)
  np.testing.assert_allclose(with_m, np_qcc(c, q, 0.1, pid, rel=rel), rtol=RTOL)
  assert abs(float(with_m) - float(without)) > 1e-4


def test_qcc_plain_no_extras():
  rng = np.random.default_rng(6)
  c, q = _unit(rng, 5, 4), _unit(rng, 5, 4)
  pid = np.arange(5, dtype=np.int32)
  loss, _ = losses.qcc_loss(c, q, 0.07, pid)
  np.testing.assert_allclose(loss, np_qcc(c, q, 0.07, pid), rtol=RTOL)


def test_label_policy_rejects_unknown():
  with pytest.raises(ValueError, match="label policy"):
    losses.label_weights(jnp.array([1]), "soft")
