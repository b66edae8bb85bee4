"""The click models: the cross layer by hand, the tower's derived features,
and one training step on 1 device equal to the (2, 4, 1) mesh."""

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dashclip_jax.ranking import embeddings
from dashclip_jax.ranking import models
from dashclip_jax.ranking import train
from dashclip_jax.train import sharding
from dashclip_jax.train import state as train_state

VOCAB = (12, 4, 5, 3, 8, 10)


def test_cross_layer_full_rank_hand_case():
  x0 = jnp.array([[1.0, 2.0]])
  xl = jnp.array([[3.0, -1.0]])
  w = np.array([[1.0, 2.0], [0.5, -1.0]])  # Flax kernels are (in, out).
  b = np.array([0.1, -0.2])
  params = {"w": {"kernel": w, "bias": b}}
  got = models.CrossLayer().apply({"params": params}, x0, xl)
  # W x_l + b, W = kernel^T: [3*1 + -1*0.5, 3*2 + -1*-1] + b = [2.6, 6.8];
  # x0 * that + x_l = [1*2.6 + 3, 2*6.8 - 1] = [5.6, 12.6].
  np.testing.assert_allclose(got, [[5.6, 12.6]], rtol=1e-6)


def test_cross_layer_low_rank_hand_case():
  x0 = jnp.array([[1.0, -1.0, 2.0]])
  xl = jnp.array([[2.0, 0.0, 1.0]])
  v = np.array([[1.0], [3.0], [-1.0]])  # (3, 1): V^T x_l = 2 - 1 = 1.
  u = np.array([[2.0, -1.0, 0.5]])      # (1, 3): U (V^T x_l) = [2, -1, .5].
  b = np.array([0.0, 1.0, 0.5])
  params = {"v": {"kernel": v}, "u": {"kernel": u, "bias": b}}
  got = models.CrossLayer(rank=1).apply({"params": params}, x0, xl)
  # x0 * ([2, 0, 1]) + x_l = [2, 0, 2] + [2, 0, 1] = [4, 0, 3].
  np.testing.assert_allclose(got, [[4.0, 0.0, 3.0]], rtol=1e-6)


def test_embedding_features_hand_case():
  product = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
  tables = {"product": product, "query": np.array([[0.6, 0.8]], np.float32)}
  f = models.embedding_features(
      tables, jnp.array([0, 2]), jnp.array([0, 0]),
      jnp.array([[1, 2, -1], [-1, -1, -1]]))
  np.testing.assert_allclose(f["p"], product[[0, 2]])
  # Row 0 bought products 1 and 2: pool = [0.3, 0.9], |pool| = sqrt(0.9).
  np.testing.assert_allclose(f["pool"], [[0.3, 0.9], [0.0, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(
      f["derived"], [[0.6, 0.3 / np.sqrt(0.9), 1.0], [1.0, 0.0, 0.0]],
      rtol=1e-5)


def _rows(n, seed=0, history=4):
  rng = np.random.default_rng(seed)
  cat = np.stack([rng.integers(0, v, n) for v in VOCAB], 1)
  hist = rng.integers(-1, VOCAB[0], (n, history))
  return {"categorical": cat.astype(np.int32),
          "numeric": rng.normal(size=(n, 3)).astype(np.float32),
          "product": cat[:, 0].astype(np.int32),
          "query": rng.integers(0, 6, n).astype(np.int32),
          "history": hist.astype(np.int32),
          "click": (rng.random(n) < 0.3).astype(np.float32)}


def _tables(seed=0, dim=8):
  rng = np.random.default_rng(seed)
  norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(
      np.float32)
  return embeddings.Tables(norm(rng.normal(size=(VOCAB[0], dim))),
                           norm(rng.normal(size=(6, dim))), "random")


def _two_steps(kind, mesh_config, devices, rank=0):
  module = models.Ranker(models.RankerConfig(kind=kind, vocab=VOCAB,
                                             cross_rank=rank, mlp=(16, 8),
                                             tower_mlp=(16,), head_mlp=(8,)))
  mesh = sharding.make_mesh(mesh_config, devices)
  tables = _tables()
  dev_tables = train.device_tables(tables, mesh)
  settings = train.TrainSettings(lr=1e-3, warmup_steps=0)
  tx = helpers.keeping_grads(train.optimizer(settings, total_steps=10))
  params = train.init_params(module, _rows(2), dev_tables, seed=0)
  state, shardings = train.init_state(params, tx, mesh)
  step, jitted, losses = train.make_train_step(module, tx), None, []
  for i in range(2):
    batch = sharding.global_batch(_rows(16, seed=i + 1), mesh)
    jitted = jitted or train_state.jit_step(step, shardings, batch, mesh,
                                            fast_compile=True)
    state, metrics = jitted(state, batch, dev_tables)
    losses.append(float(metrics["loss"]))
    grads = grads if i else jax.device_get(state.opt_state[0])
  return jax.device_get(state.params), losses, grads


# The tower and the ablation hold the baseline's DCN; full and low rank.
@pytest.mark.parametrize("kind,rank", [("tower", 0), ("single", 3)])
def test_train_step_on_one_device_equals_the_2x4x1_mesh(kind, rank):
  want, want_losses, want_grads = _two_steps(kind, [("data", 1)],
                                             jax.devices()[:1], rank)
  got, losses, grads = _two_steps(
      kind, [("data", 2), ("fsdp", 4), ("tensor", 1)], jax.devices(), rank)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  # AdamW hides a uniform gradient scale (a sum for a mean over "data")
  # from the params; the first step's gradients show it.
  helpers.assert_same_grads(grads, want_grads)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)
  assert want_losses[1] != want_losses[0]  # The step moved something.


def test_predict_pads_the_last_batch_and_keeps_row_order():
  module = models.Ranker(models.RankerConfig(kind="baseline", vocab=VOCAB,
                                             mlp=(8,), head_mlp=(4,)))
  mesh = sharding.make_mesh([("data", 8)], jax.devices())
  rows = _rows(21)
  params = train.init_params(module, rows, None, seed=0)
  got = train.predict(module, params, rows, None, mesh, batch_size=8)
  want = jax.nn.sigmoid(module.apply({"params": params}, rows))
  assert got.shape == (21,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
