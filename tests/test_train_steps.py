"""Train steps: any mesh == 1 device, GradCache == big batch, one compile.

Runs on the 8 fake CPU devices of conftest.py. Compilation dominates, so the
model is the lead's "tiny" config cut to 1 layer per tower and compiled steps
are shared through module-scoped fixtures.
"""

import dataclasses
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax import losses
from dashclip_jax import model as model_lib
from dashclip_jax.train import grad_cache
from dashclip_jax.train import itm_pairs
from dashclip_jax.train import optim
from dashclip_jax.train import sharding
from dashclip_jax.train import state as train_state
from dashclip_jax.train import step_config
from dashclip_jax.train import steps as ts
from dashclip_jax.trainers import step_options

import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

B, L, LQ, N, R = 8, 8, 6, 2, 3
MESHES = {
    "8x1x1": [("data", 8), ("fsdp", 1), ("tensor", 1)],
    "1x8x1": [("data", 1), ("fsdp", 8), ("tensor", 1)],
    "2x4x1": [("data", 2), ("fsdp", 4), ("tensor", 1)],
    "2x2x2": [("data", 2), ("fsdp", 2), ("tensor", 2)],
}

CFG = helpers.one_layer_tiny_config()
S1 = step_config.StepConfig(deterministic=True, momentum=0.995, queue_size=12,
                   alpha_ramp_steps=4)
S2 = step_config.StepConfig(deterministic=True, train_product_tower=True,
                   label_policy="weighted",
                   symmetric=True, hard_k=4)
# init_lr > 0: the first step must already move the params (else the
# one-step stage-2 comparisons would compare untouched params).
OPT = optim.OptimConfig(lr=1e-3, init_lr=5e-4, warmup_steps=2, total_steps=10,
                        clip_norm=1.0, lr_mults=(("img/.*", 0.5), (".*", 1.0)))


def _batches():
  rng = np.random.default_rng(0)
  s = CFG.vision.image_size
  ids, mask = helpers.padded_title_ids(rng, B, L)
  pid = np.array([0, 1, 2, 0, 3, 4, 5, 6], np.int32)  # rows 0 and 3: same product
  image = rng.standard_normal((B, s, s, 3)).astype(np.float32)
  b1 = {"image": image, "ids": ids, "mask": mask, "product_id": pid}
  qids = rng.integers(1000, 2000, (B, LQ)).astype(np.int32)
  qids[:, 0] = 101
  rel = np.full((B, R), -1, np.int32)
  rel[1, 0] = 2  # query 1 also relevant to product 2 (a false negative)
  rel[5, :2] = [0, 6]
  b2 = {"image": image, "title_ids": ids, "title_mask": mask,
        "product_id": pid, "query_ids": qids,
        "query_mask": np.ones((B, LQ), np.int32),
        "neg_query_ids": rng.integers(1000, 2000, (B, N, LQ)).astype(np.int32),
        "neg_query_mask": np.ones((B, N, LQ), np.int32),
        "neg_valid": rng.uniform(size=(B, N)) > 0.3,
        "relevant_product_ids": rel,
        "label": np.array([2, 1, 2, 2, 1, 2, 2, 1], np.int32)}
  return b1, b2


BATCH1, BATCH2 = _batches()




# CPU compile time dominates these tests; XLA's backend optimisations are
# not what is under test (every run here uses the same options).
PARAMS = jax.device_get(model_lib.unbox(
    jax.jit(lambda r: model_lib.init_params(CFG, r))(jax.random.key(0))))
TX = optim.make_optimizer(OPT, PARAMS)


def _run(stage, mesh, step_cfg, tx, n_steps=1, cfg=CFG, batch=None):
  """n steps on `mesh`; returns (host state, list of host metrics, jitted fn)."""
  make = ts.make_stage1_step if stage == 1 else ts.make_stage2_step
  state = train_state.init_state(cfg, step_cfg, tx, jax.random.key(0),
                                 mesh, params=PARAMS)
  if batch is None:
    batch = BATCH1 if stage == 1 else BATCH2
  batch = sharding.global_batch(batch, mesh)
  fn = train_state.jit_step(make(cfg, step_cfg, tx, mesh),
                            train_state.state_shardings(state), batch, mesh,
                            fast_compile=True)
  mets = []
  for i in range(n_steps):
    state, m = fn(state, batch, jax.random.fold_in(jax.random.key(7), i))
    mets.append(jax.device_get(m))
  return jax.device_get(state), mets, fn


def _one_device():
  return sharding.make_mesh([("data", 1)], jax.devices()[:1])


@pytest.fixture(scope="module")
def reference():
  """1-device results: stage 1 (3 steps, to exercise the queue), stage 2."""
  tx = TX
  s1, m1, f1 = _run(1, _one_device(), S1, tx, n_steps=3)
  s2, m2, _ = _run(2, _one_device(), S2, tx, n_steps=1)
  return {1: (s1, m1, f1), 2: (s2, m2, None)}


def _assert_tree_close(a, b, rtol, atol, what):
  la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
  assert len(la) == len(lb), what
  for (path, x), y in zip(la, lb):
    np.testing.assert_allclose(
        np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
        err_msg=f"{what}: {jax.tree_util.keystr(path)}")


def _assert_tree_close_scaled(a, b, rel, what):
  """|a - b| <= rel * max|b| per leaf: summation-order noise scales with the
  summands, not with each (possibly cancelling) result element."""
  la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
  assert len(la) == len(lb), what
  for (path, x), y in zip(la, lb):
    y = np.asarray(y)
    scale = float(np.abs(y).max()) if y.size else 0.0
    np.testing.assert_allclose(
        np.asarray(x), y, rtol=0, atol=rel * scale + 1e-12,
        err_msg=f"{what}: {jax.tree_util.keystr(path)}")


def _assert_metrics_close(got, want):
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6,
                               err_msg=k)


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_stage1_any_mesh_equals_one_device(reference, mesh_name):
  mesh = sharding.make_mesh(MESHES[mesh_name])
  state, mets, _ = _run(1, mesh, S1, TX, n_steps=3)
  ref_state, ref_mets, _ = reference[1]
  for got, want in zip(mets, ref_mets):
    _assert_metrics_close(got, want)
  # Params, Adam moments, momentum params and queues after 3 steps.
  _assert_tree_close(state.params, ref_state.params, 1e-5, 2e-6, "params")
  _assert_tree_close_scaled(state.opt_state, ref_state.opt_state, 1e-3, "opt")
  _assert_tree_close(state.params_m, ref_state.params_m, 1e-5, 2e-6, "params_m")
  _assert_tree_close(state.queue, ref_state.queue, 1e-5, 1e-6, "queue")
  assert int(state.queue["ptr"]) == (3 * B) % S1.queue_size


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_stage2_any_mesh_equals_one_device(reference, mesh_name):
  mesh = sharding.make_mesh(MESHES[mesh_name])
  state, mets, _ = _run(2, mesh, S2, TX)
  ref_state, ref_mets, _ = reference[2]
  _assert_metrics_close(mets[0], ref_mets[0])
  _assert_tree_close(state.params, ref_state.params, 1e-5, 2e-6, "params")
  _assert_tree_close_scaled(state.opt_state, ref_state.opt_state, 1e-3, "opt")


@functools.cache
def _production_stage2():
  """configs/stage2.py:tiny's stage 2 -> (config, StepConfig, optimizer): its
  loss block (dropout on, pair weights from the data pipeline), its
  lr_mults (product tower body and stage-1 heads frozen, product_proj
  trained), so a frozen body whose features the trainer caches. The lr
  schedule is OPT's, which moves the params on the first step."""
  spec = importlib.util.spec_from_file_location(
      "stage2_config", os.path.join(REPO, "configs", "stage2.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  mults = step_options.optim_config(config.optim, OPT.total_steps).lr_mults
  sc = dataclasses.replace(
      step_options.step_config(config.loss, config.train.accum_steps),
      train_product_tower=optim.trains_any(
          model_lib.abstract_params(CFG), mults,
          step_config.PRODUCT_TOWER_BODY_REGEX))
  tx = optim.make_optimizer(dataclasses.replace(OPT, lr_mults=mults), PARAMS)
  return config, sc, tx


@functools.cache
def _product_features():
  """The frozen body's features of BATCH2's products (eval mode), as the
  trainer's cached table gives them."""
  _, sc, _ = _production_stage2()
  return np.asarray(jax.jit(ts.make_product_features_fn(CFG, sc))(
      PARAMS, BATCH2, jax.random.key(0)))


def _pipeline_batch(policy, weight=0.5):
  """BATCH2's pairs as the data pipeline ships them under a label-1 policy:
  the pairs `stage2_pairs` keeps, their label_weight, cached features."""
  pid = BATCH2["product_id"]
  rel = relevance_lib.Relevance(
      name="BATCH2", query_ids=[str(i) for i in range(B)], queries=[""] * B,
      query=np.arange(B, dtype=np.int32), product=pid,
      label=BATCH2["label"].astype(np.int8), num_products=int(pid.max()) + 1)
  pairs = relevance_lib.stage2_pairs(rel, policy, weight)
  rows = pairs.query
  batch = {k: v[rows] for k, v in BATCH2.items() if k != "image"}
  np.testing.assert_array_equal(batch["label"], pairs.label)
  batch["label_weight"] = pairs.weight
  batch["product_features"] = _product_features()[rows]
  return batch


@pytest.fixture(scope="module")
def production_stage2():
  """One 1-device step of the production stage-2 setup on BATCH2."""
  config, sc, tx = _production_stage2()
  batch = _pipeline_batch(config.data.label1_policy, config.data.label1_weight)
  state, mets, fn = _run(2, _one_device(), sc, tx, batch=batch)
  return sc, tx, batch, state, mets, fn


def test_production_stage2_reference_is_the_production_setup(
    production_stage2):
  """Guards the mesh test below: frozen cached body, pipeline weights with
  label-1 pairs at 0.5, dropout on, and a step that trains what it should."""
  sc, tx, batch, state, mets, fn = production_stage2
  assert not sc.train_product_tower and not sc.deterministic
  assert sc.label_policy is None and "image" not in batch
  np.testing.assert_allclose(batch["label_weight"],
                             np.where(BATCH2["label"] == 1, 0.5, 1.0))
  moved = {k for k in PARAMS if any(
      not np.array_equal(a, b) for a, b in zip(
          jax.tree.leaves(state.params[k]), jax.tree.leaves(PARAMS[k])))}
  assert moved == {"product_proj", "query", "query_proj", "temp"}, moved
  assert np.isfinite(mets[0]["loss"])
  # Dropout is live: another rng, another loss (the mesh test then also
  # shows that the dropout draws do not depend on the mesh).
  mesh = _one_device()
  fresh = train_state.init_state(CFG, sc, tx, jax.random.key(0), mesh,
                                 params=PARAMS)
  _, other = fn(fresh, sharding.global_batch(batch, mesh), jax.random.key(8))
  assert abs(float(other["loss"]) - float(mets[0]["loss"])) > 1e-4


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_production_stage2_any_mesh_equals_one_device(production_stage2,
                                                      mesh_name):
  """configs/stage2.py:tiny's setup (frozen body, cached features, dropout,
  pipeline-side label weights) on each mesh equals one device."""
  sc, tx, batch, ref_state, ref_mets, _ = production_stage2
  mesh = sharding.make_mesh(MESHES[mesh_name])
  state, mets, _ = _run(2, mesh, sc, tx, batch=batch)
  _assert_metrics_close(mets[0], ref_mets[0])
  _assert_tree_close(state.params, ref_state.params, 1e-5, 2e-6, "params")
  _assert_tree_close_scaled(state.opt_state, ref_state.opt_state, 1e-3, "opt")


def test_label1_exclude_means_the_same_in_the_step_and_the_pipeline():
  """label1_policy "exclude" has one meaning: label-1 pairs are no training
  pairs. The pipeline drops them (stage2_pairs); StepConfig.label_policy=
  "exclude" on a batch that still holds them makes those rows inert,
  neither anchors nor in-batch negatives (either direction, hard_k too):
  the same loss, gradients and update as the pipeline's batch."""
  _, sc, tx = _production_stage2()
  # Dropout off: its masks follow the batch's shape, which differs here.
  sc = dataclasses.replace(sc, deterministic=True, symmetric=True, hard_k=2)
  mesh = _one_device()
  full = _pipeline_batch("positive")
  dropped = _pipeline_batch("exclude")
  assert len(full["label"]) == B and (dropped["label"] == 2).all()
  s_step, m_step, _ = _run(2, mesh, dataclasses.replace(
      sc, label_policy="exclude"), tx, batch=full)
  s_pipe, m_pipe, _ = _run(2, mesh, sc, tx, batch=dropped)
  for k in ("loss", "qcc_p2q", "qcc_q2p", "qcc_acc", "qcc_num_neg",
            "grad_norm"):
    np.testing.assert_allclose(m_step[0][k], m_pipe[0][k], rtol=2e-5,
                               atol=2e-6, err_msg=k)
  _assert_tree_close_scaled(s_step.opt_state, s_pipe.opt_state, 1e-4, "opt")
  _assert_tree_close(s_step.params, s_pipe.params, 1e-5, 2e-6, "params")


def test_scanned_layers_on_a_mesh_equal_one_device(reference):
  """scan_layers stacks each tower's sharded layer params inside the step
  (test_model checks several layers): 3 stage-1 steps on the (2, 2, 2) mesh
  equal the unrolled layers on 1 device."""
  mesh = sharding.make_mesh(MESHES["2x2x2"])
  state, mets, _ = _run(1, mesh, S1, TX, n_steps=3,
                        cfg=CFG.replace(scan_layers=True))
  ref_state, ref_mets, _ = reference[1]
  for got, want in zip(mets, ref_mets):
    _assert_metrics_close(got, want)
  _assert_tree_close(state.params, ref_state.params, 1e-5, 2e-6, "params")


def test_reference_steps_really_train(reference):
  """Guards the equivalence tests against a no-op step."""
  s1, m1, _ = reference[1]
  moved = [float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(s1.params), jax.tree.leaves(PARAMS))]
  assert np.median(moved) > 1e-4
  s2, m2, _ = reference[2]  # One stage-2 step trains every tower.
  moved2 = [float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(s2.params), jax.tree.leaves(PARAMS))]
  assert np.median(moved2) > 1e-4 and np.isfinite(m2[0]["loss"])
  assert all(np.isfinite(m["loss"]) for m in m1)
  assert int(s1.step) == 3
  # Queue of 12 after 3 batches of 8: ptr 0 -> 8 -> 4 -> 0, so rows 0..3
  # hold step 2's last 4 rows and rows 4..11 all of step 3, in batch order.
  pid = BATCH1["product_id"]
  np.testing.assert_array_equal(s1.queue["ids"],
                                np.concatenate([pid[4:], pid]))
  assert int(s1.queue["ptr"]) == 0


def test_step_compiles_once(reference):
  """3 steps ran through one jitted fn: exactly one executable; more steps
  trigger no backend compilation."""
  _, _, fn = reference[1]
  assert fn._cache_size() == 1
  compiles = []
  listener = lambda name, *a, **k: compiles.append(name) if (
      "backend_compile" in name) else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    mesh = _one_device()
    state = train_state.init_state(CFG, S1, TX, jax.random.key(0), mesh,
                                   params=PARAMS)
    # The same jitted function is reused with a fresh (equal-layout) state.
    batch = sharding.global_batch(BATCH1, mesh)
    compiles.clear()
    for i in range(3):
      state, _ = fn(state, batch, jax.random.key(i))
    jax.block_until_ready(state)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == []
  assert fn._cache_size() == 1


@pytest.mark.parametrize("stage", [1, 2])
def test_cached_accumulation_equals_big_batch(reference, stage):
  """k=2 GradCache microbatches == one batch of 2x the microbatch size.

  Compared with the 1-device reference (k=1) after the same steps: metrics,
  Adam's first moment (a running mean of the clipped gradients, i.e. the
  gradients themselves up to a global scale) and the updated params.
  Stage 2 trains the product tower, so its VJP is covered too.
  """
  base = S1 if stage == 1 else S2
  ref_state, ref_mets, _ = reference[stage]
  state, mets, _ = _run(stage, _one_device(),
                        dataclasses.replace(base, accum_steps=2), TX,
                        n_steps=len(ref_mets))
  for got, want in zip(mets, ref_mets):
    _assert_metrics_close(got, want)
  _assert_tree_close_scaled(state.opt_state, ref_state.opt_state, 1e-3, "opt")
  mu = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 1]
  assert max(float(np.abs(x).max()) for x in mu) > 1e-4  # real grads
  _assert_tree_close(state.params, ref_state.params, 1e-5, 2e-6, "params")


def test_remat_changes_nothing_but_memory(reference):
  """model_config(remat=True) recomputes blocks in the backward pass: same
  metrics and updated params as the stored-activation step."""
  state, mets, _ = _run(1, _one_device(), S1, TX, n_steps=1,
                        cfg=CFG.replace(remat=True))
  _, ref_mets, ref_fn = reference[1]
  mesh = _one_device()
  plain = train_state.init_state(CFG, S1, TX, jax.random.key(0), mesh,
                                 params=PARAMS)
  plain, _ = jax.device_get(ref_fn(plain, sharding.global_batch(BATCH1, mesh),
                                   jax.random.fold_in(jax.random.key(7), 0)))
  _assert_metrics_close(mets[0], ref_mets[0])
  _assert_tree_close(state.params, plain.params, 1e-5, 2e-6, "params")


def test_hard_negatives_mesh_independent():
  """Same rng -> same negatives whether the similarity matrix is on one
  device or split over 8 along either axis."""
  rng = np.random.default_rng(3)
  b = 16
  sim = rng.standard_normal((b, b)).astype(np.float32)
  ids = rng.integers(0, 10, b).astype(np.int32)
  key = jax.random.key(11)
  fn = jax.jit(losses.sample_hard_negatives)
  want = jax.device_get(fn(key, jax.device_put(sim, jax.devices()[0]), ids))
  for name in ("8x1x1", "1x8x1", "2x2x2"):
    mesh = sharding.make_mesh(MESHES[name])
    for spec in (jax.sharding.PartitionSpec(sharding.BATCH_AXES, None),
                 jax.sharding.PartitionSpec(None, sharding.BATCH_AXES)):
      s = jax.device_put(sim, jax.sharding.NamedSharding(mesh, spec))
      i = jax.device_put(ids, sharding.batch_sharding(mesh))
      got = jax.device_get(fn(key, s, i))
      for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
  other = jax.device_get(fn(jax.random.key(12), sim, ids))
  assert not all(np.array_equal(g, w) for g, w in zip(other, want))


# ---------------------------------------------------------------------------
# ITM pairs and GradCache, by hand.
# ---------------------------------------------------------------------------


def _fake_itm_score(ids, mask, image_tokens, rng):
  """(text, image) as "logits": text id ids[:, 0] (+0.5 when mask[:, 1] is
  0, so masks must travel with their ids), image id from its tokens, shared
  by p consecutive texts as in DashClip.itm_logits."""
  del rng
  p = ids.shape[0] // image_tokens.shape[0]
  text = ids[:, 0] + 0.5 * (1 - mask[:, 1])
  return jnp.stack([text.astype(jnp.float32),
                    jnp.repeat(image_tokens[:, 0, 0], p)], -1)


def test_itm_pairs_line_up_with_their_weights_and_labels():
  """3 rows worked by hand: the (text, image) of every ITM logit row and its
  weight come in itm_loss' order (positives, (text b, hard image),
  (hard text, image b)); swapping kinds or weight columns fails."""
  ids = jnp.array([[10, 7], [11, 7], [12, 7]], jnp.int32)
  mask = jnp.array([[1, 1], [1, 0], [1, 1]], jnp.int32)  # Text 11 -> 11.5.
  tokens = jnp.array([100.0, 101.0, 102.0]).reshape(3, 1, 1)
  neg_txt = jnp.array([2, 0, 1])  # Hard text of image b.
  neg_img = jnp.array([1, 2, 0])  # Hard image of text b.
  ok_t = jnp.array([True, True, False])
  ok_i = jnp.array([True, False, True])
  valid = jnp.array([True, True, False])
  pairs = itm_pairs.make_pairs(ids, mask, tokens, neg_txt, neg_img, ok_t, ok_i,
                         valid)
  logits, w = itm_pairs.pair_logits(pairs, _fake_itm_score, jax.random.key(0))
  assert itm_pairs.PAIR_KINDS[0] == "positive"
  np.testing.assert_array_equal(logits, [
      [10, 100], [11.5, 101], [12, 102],   # positive: text b, image b
      [10, 101], [11.5, 102], [12, 100],   # text b, hard image neg_img[b]
      [12, 100], [10, 101], [11.5, 102]])  # hard text neg_txt[b], image b
  np.testing.assert_array_equal(w, [1, 1, 0,   # valid
                                    1, 0, 0,   # valid and ok_i
                                    1, 1, 0])  # valid and ok_t
  # itm_loss labels rows by position: a scorer that says "match" exactly
  # for text b with image b is then right on every weighted row.
  match = (logits[:, 0].astype(jnp.int32) - 10) == (logits[:, 1] - 100)
  _, mets = losses.itm_loss(jnp.stack([~match, match], -1).astype(float), w)
  assert float(mets["itm_acc"]) == 1.0


def test_grad_cache_split_is_strided_and_gradients_equal_plain():
  """Microbatch m is rows m, m+k, ...; k=4 GradCache gives the loss and
  gradients of jax.value_and_grad on the whole batch, for a loss that
  couples all rows (a softmax over the batch) and has a param of its own."""
  np.testing.assert_array_equal(grad_cache.split(jnp.arange(6), 2),
                                [[0, 2, 4], [1, 3, 5]])
  np.testing.assert_array_equal(
      grad_cache.merge(grad_cache.split(jnp.arange(6), 3)), jnp.arange(6))
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.standard_normal((3, 2)), jnp.float32),
            "t": jnp.float32(2.0)}
  batch = {"x": jnp.asarray(rng.standard_normal((8, 3)), jnp.float32)}
  encode = lambda p, mb, r: {"z": jnp.tanh(mb["x"] @ p["w"])}
  def loss_on_reps(p, reps):
    logp = jax.nn.log_softmax(p["t"] * reps["z"] @ reps["z"].T, -1)
    return -jnp.mean(jnp.diag(logp)), {}
  key = jax.random.key(0)
  (want, _), g_want = grad_cache.value_and_grad(encode, loss_on_reps, params,
                                                batch, key, 1)
  (got, _), g_got = grad_cache.value_and_grad(encode, loss_on_reps, params,
                                              batch, key, 4)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  _assert_tree_close(g_got, g_want, 1e-5, 1e-7, "grads")
  assert float(jnp.abs(g_want["w"]).max()) > 1e-3


# ---------------------------------------------------------------------------
# Optimizer.
# ---------------------------------------------------------------------------


def _toy_params():
  return {"img": {"block": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
                  "pos_embed": jnp.ones((1, 3, 2))},
          "txt": {"norm": {"scale": jnp.ones(2)}, "dense": {"kernel": jnp.ones((2, 2))}},
          "temp": jnp.float32(0.07)}


def test_decay_mask_and_freezing():
  p = _toy_params()
  mask = optim.decay_mask(p)
  assert mask["img"]["block"]["kernel"] and mask["txt"]["dense"]["kernel"]
  assert not mask["img"]["block"]["bias"] and not mask["img"]["pos_embed"]
  assert not mask["txt"]["norm"]["scale"] and not mask["temp"]
  c = optim.OptimConfig(lr=0.1, weight_decay=0.5, clip_norm=None,
                        lr_mults=(("img/.*", 0.0), ("temp", 2.0), (".*", 1.0)))
  tx = optim.make_optimizer(c, p)
  g = jax.tree.map(jnp.ones_like, p)
  upd, _ = tx.update(g, tx.init(p), p)
  # Frozen tower: no update, not even weight decay.
  assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(upd["img"]))
  # First Adam step: -lr * mult * (sign(g) + wd * p where decayed).
  np.testing.assert_allclose(upd["temp"], -0.2, rtol=1e-5)
  np.testing.assert_allclose(upd["txt"]["norm"]["scale"], -0.1, rtol=1e-5)
  np.testing.assert_allclose(upd["txt"]["dense"]["kernel"], -0.1 * 1.5,
                             rtol=1e-5)


def test_frozen_params_do_not_count_in_clipping():
  p = _toy_params()
  c = optim.OptimConfig(lr=1.0, weight_decay=0.0, clip_norm=1.0,
                        lr_mults=(("img/.*", 0.0), (".*", 1.0)))
  tx = optim.make_optimizer(c, p)
  g = jax.tree.map(jnp.zeros_like, p)
  g["img"]["block"]["kernel"] = jnp.full((2, 2), 1e6)
  g["temp"] = jnp.float32(0.5)
  upd, _ = tx.update(g, tx.init(p), p)
  # Without the frozen 1e6 grads in the norm, temp's grad is not clipped to ~0.
  assert float(upd["temp"]) == pytest.approx(-1.0, rel=1e-4)


def test_schedule_warmup_then_cosine():
  c = optim.OptimConfig(lr=1.0, warmup_steps=10, total_steps=110, end_lr=0.0)
  s = optim.schedule(c)
  assert float(s(0)) == 0.0
  assert float(s(5)) == pytest.approx(0.5)
  assert float(s(10)) == pytest.approx(1.0)
  assert float(s(60)) == pytest.approx(0.5, abs=1e-6)
  assert float(s(110)) == pytest.approx(0.0, abs=1e-6)


def test_lr_mults_unmatched_param_is_an_error():
  with pytest.raises(ValueError, match="no rule matches param 'temp'"):
    optim.lr_mult_tree({"temp": jnp.zeros(())}, [("img/.*", 1.0)])


# The whole product tower (and the stage-1 heads) frozen.
STAGE2_FROZEN_TOWER = (
    (r"(img|txt|product_proj|vision_proj|text_proj|itm_head)/.*", 0.0),
    (".*", 1.0))


def test_stage2_frozen_tower_bf16_accumulated(reference):
  """bf16 compute, frozen product tower, k=2 accumulation (the frozen path
  embeds products once, outside the GradCache VJP): the tower does not move
  at all (no grad, no weight decay), the query tower does, params and Adam
  state stay float32, and the loss matches the float32 run to bf16
  precision."""
  cfg16 = CFG.replace(dtype="bfloat16")
  tx = optim.make_optimizer(
      dataclasses.replace(OPT, lr_mults=STAGE2_FROZEN_TOWER), PARAMS)
  sc = dataclasses.replace(S2, train_product_tower=False, accum_steps=2)
  mesh = _one_device()
  state = train_state.init_state(cfg16, sc, tx, jax.random.key(0), mesh,
                                 params=PARAMS)
  batch = sharding.global_batch(BATCH2, mesh)
  fn = train_state.jit_step(ts.make_stage2_step(cfg16, sc, tx, mesh),
                            train_state.state_shardings(state), batch, mesh,
                            fast_compile=True)
  state, mets = jax.device_get(fn(state, batch, jax.random.key(7)))
  for name in ("img", "txt", "product_proj", "itm_head"):
    for a, b in zip(jax.tree.leaves(state.params[name]),
                    jax.tree.leaves(PARAMS[name])):
      np.testing.assert_array_equal(a, b, err_msg=name)
  moved = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(state.params["query"]), jax.tree.leaves(PARAMS["query"])))
  assert moved > 1e-4
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
  assert all(x.dtype in (np.float32, np.int32) for x in
             jax.tree.leaves(state.opt_state))
  np.testing.assert_allclose(mets["loss"], reference[2][1][0]["loss"],
                             rtol=3e-2)


def test_ragged_batch_padding_rows_are_inert():
  """A final ragged batch padded to B with valid=False, its padding rows
  carrying real rows' product ids: loss, gradients (Adam's moments and the
  gradient norm), update, momentum params and queue equal one step on the
  same batch without its padding rows, and the queue pointer advances by
  the real rows only. ITM's hard negatives draw from the batch's shape, so
  it is weighted 0 here (test_losses checks that padding is never drawn)."""
  mesh = _one_device()
  real = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
  rng = np.random.default_rng(9)
  padded = {k: v.copy() for k, v in BATCH1.items()}
  padded["valid"] = real
  padded["image"][~real] = rng.standard_normal(padded["image"][~real].shape)
  padded["ids"][~real, 1:] = rng.integers(1000, 2000, (2, L - 1))
  padded["product_id"][~real] = [0, 1]  # Equal to rows 0, 3 and 1's ids.
  unpadded = {k: v[real] for k, v in BATCH1.items()}
  sc = dataclasses.replace(S1, itm_weight=0.0)
  outs = []
  for batch in (padded, unpadded):
    state = train_state.init_state(CFG, sc, TX, jax.random.key(0), mesh,
                                   params=PARAMS)
    batch = sharding.global_batch(batch, mesh)
    fn = train_state.jit_step(ts.make_stage1_step(CFG, sc, TX, mesh),
                              train_state.state_shardings(state), batch, mesh,
                              fast_compile=True)
    outs.append(jax.device_get(fn(state, batch, jax.random.key(3))))
  (s_a, m_a), (s_b, m_b) = outs
  assert np.isfinite(m_b["loss"]) and m_b["loss"] < 100
  for k in ("loss", "itc_loss", "itc_i2t", "itc_t2i", "itc_acc", "grad_norm"):
    np.testing.assert_allclose(m_a[k], m_b[k], rtol=2e-5, atol=2e-6,
                               err_msg=k)
  _assert_tree_close_scaled(s_a.opt_state, s_b.opt_state, 1e-4, "opt")
  _assert_tree_close(s_a.params, s_b.params, 1e-5, 2e-6, "params")
  _assert_tree_close(s_a.params_m, s_b.params_m, 1e-5, 2e-6, "params_m")
  _assert_tree_close(s_a.queue, s_b.queue, 1e-5, 1e-6, "queue")
  assert int(s_a.queue["ptr"]) == 6
  np.testing.assert_array_equal(s_a.queue["ids"][:6], BATCH1["product_id"][:6])
  np.testing.assert_array_equal(s_a.queue["ids"][6:], -1)  # Untouched.
