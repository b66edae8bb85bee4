"""Stage 2's product side: what trains, a deterministic frozen tower, the
cached feature table, and freezing as a visible, overridable config value."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from dashclip_jax import model as model_lib
from dashclip_jax.train import optim
from dashclip_jax.train import state as train_state
from dashclip_jax.train import step_config
from dashclip_jax.train import steps as ts

import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, L, LQ, N = 8, 8, 6, 2

CFG = helpers.one_layer_tiny_config()
# configs/stage2.py:tiny's freeze rules: the product tower body and the
# stage-1 heads frozen, product_proj trained with the query tower.
TRAIN_PRODUCT_PROJ = (
    (r"(img|txt|vision_proj|text_proj|itm_head)/.*", 0.0), (".*", 1.0))
PARAMS = jax.device_get(model_lib.unbox(
    jax.jit(lambda r: model_lib.init_params(CFG, r))(jax.random.key(0))))


def _batch():
  rng = np.random.default_rng(0)
  s = CFG.vision.image_size
  ids, mask = helpers.padded_title_ids(rng, B, L)
  qids = rng.integers(1000, 2000, (B, LQ)).astype(np.int32)
  qids[:, 0] = 101
  return {"image": rng.standard_normal((B, s, s, 3)).astype(np.float32),
          "title_ids": ids, "title_mask": mask,
          "product_id": np.arange(B, dtype=np.int32), "query_ids": qids,
          "query_mask": np.ones((B, LQ), np.int32),
          "neg_query_ids": rng.integers(1000, 2000,
                                        (B, N, LQ)).astype(np.int32),
          "neg_query_mask": np.ones((B, N, LQ), np.int32),
          "neg_valid": np.ones((B, N), bool),
          "label_weight": np.ones((B,), np.float32)}


BATCH = _batch()


def _one_step(step_cfg, lr_mults, batch=BATCH, rng=1):
  """One stage-2 step; -> (params after, metrics). No weight decay, so a
  param moves iff it got a non-zero gradient and a non-zero lr mult."""
  opt = optim.OptimConfig(lr=1e-2, init_lr=1e-2, total_steps=10,
                          weight_decay=0.0, lr_mults=lr_mults)
  tx = optim.make_optimizer(opt, PARAMS)
  state = train_state.init_state(CFG, step_cfg, tx, jax.random.key(0),
                                 params=PARAMS)
  step = jax.jit(ts.make_stage2_step(CFG, step_cfg, tx),
                 compiler_options=train_state.FAST_COMPILE_OPTIONS)
  new, metrics = step(state, batch, jax.random.key(rng))
  return jax.device_get(new.params), jax.device_get(metrics)


def _moved(before, after):
  """Top-level modules with any param changed."""
  return {k for k in before
          if any(not np.array_equal(a, b) for a, b in
                 zip(jax.tree.leaves(before[k]), jax.tree.leaves(after[k])))}


def test_frozen_tower_gets_no_gradient_and_the_projection_trains():
  # Every lr mult 1: only the gradient decides what moves.
  cfg = step_config.StepConfig(deterministic=False,
                               train_product_tower=False)
  after, _ = _one_step(cfg, ((".*", 1.0),))
  moved = _moved(PARAMS, after)
  assert {"product_proj", "query", "query_proj", "temp"} <= moved
  assert not moved & {"img", "txt"}, moved


def test_trained_tower_gets_gradients():
  cfg = step_config.StepConfig(deterministic=False,
                               train_product_tower=True)
  after, _ = _one_step(cfg, ((".*", 1.0),))
  assert {"img", "txt", "product_proj", "query"} <= _moved(PARAMS, after)


def test_stage2_default_freezes_exactly_the_tower_body_and_heads():
  cfg = step_config.StepConfig(deterministic=False,
                               train_product_tower=True)
  after, _ = _one_step(cfg, TRAIN_PRODUCT_PROJ)
  assert _moved(PARAMS, after) == {"product_proj", "query", "query_proj",
                                   "temp"}


def test_frozen_product_features_do_not_depend_on_the_rng():
  frozen = ts.make_product_features_fn(
      CFG, step_config.StepConfig(deterministic=False,
                                  train_product_tower=False))
  f = jax.jit(frozen)
  a = np.asarray(f(PARAMS, BATCH, jax.random.key(1)))
  b = np.asarray(f(PARAMS, BATCH, jax.random.key(2)))
  np.testing.assert_array_equal(a, b)
  # The same call with the tower trained runs dropout: the check can fail.
  trained = jax.jit(ts.make_product_features_fn(
      CFG, step_config.StepConfig(deterministic=False,
                                  train_product_tower=True)))
  assert not np.array_equal(
      np.asarray(trained(PARAMS, BATCH, jax.random.key(1))),
      np.asarray(trained(PARAMS, BATCH, jax.random.key(2))))


def test_two_steps_on_one_batch_see_identical_frozen_embeddings():
  # Query tower deterministic, product tower frozen: steps with different
  # rngs must then give bit-identical losses (any dropout on the frozen
  # side would change them).
  cfg = step_config.StepConfig(deterministic=True, train_product_tower=False)
  _, m1 = _one_step(cfg, TRAIN_PRODUCT_PROJ, rng=1)
  _, m2 = _one_step(cfg, TRAIN_PRODUCT_PROJ, rng=2)
  assert float(m1["loss"]) == float(m2["loss"])


def test_cached_features_give_the_same_step_as_the_per_batch_forward():
  cfg = step_config.StepConfig(deterministic=True, train_product_tower=False)
  feats = jax.jit(ts.make_product_features_fn(CFG, cfg))(
      PARAMS, BATCH, jax.random.key(0))
  cached = {k: v for k, v in BATCH.items() if k != "image"}
  cached["product_features"] = np.asarray(feats)
  p_a, m_a = _one_step(cfg, TRAIN_PRODUCT_PROJ)
  p_b, m_b = _one_step(cfg, TRAIN_PRODUCT_PROJ, batch=cached)
  np.testing.assert_allclose(m_a["loss"], m_b["loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(p_a), jax.tree.leaves(p_b)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_cached_features_with_a_trained_tower_is_an_error():
  cfg = step_config.StepConfig(deterministic=True, train_product_tower=True)
  cached = dict(BATCH, product_features=np.zeros((B, CFG.text.width),
                                                 np.float32))
  with pytest.raises(ValueError, match="product tower is trained"):
    _one_step(cfg, ((".*", 1.0),), batch=cached)


_PRINT_CONFIG = """
import sys
from absl import app
from ml_collections import config_flags
CONFIG = config_flags.DEFINE_config_file("config", None, "", lock_config=True)
app.run(lambda _: print(CONFIG.value.to_json()))
"""


def _config(path, *overrides):
  """A config file + overrides through absl/ml_collections' own parser (the
  main job's), in a subprocess: absl parses overrides of the global flags."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  out = subprocess.run(
      [sys.executable, "-c", _PRINT_CONFIG, f"--config={REPO}/{path}",
       *overrides], capture_output=True, text=True, cwd=REPO, timeout=120,
      check=True)
  return ml_collections.ConfigDict(json.loads(out.stdout.splitlines()[-1]))


def _stage2_config(*overrides):
  return _config("configs/stage2.py:tiny", *overrides)


def test_config_override_unfreezes_and_freezes_modules():
  from dashclip_jax.runtime import config_files  # pylint: disable=g-import-not-at-top
  from dashclip_jax.trainers import step_options  # pylint: disable=g-import-not-at-top
  abstract = model_lib.abstract_params(CFG)

  def trained(config):
    return optim.trained_modules(
        abstract, step_options.optim_config(config.optim, 10).lr_mults)

  default = trained(_stage2_config())
  assert "product_proj" in default and "img" not in default
  frozen = trained(_stage2_config(
      "--config.optim.lr_mults=(img|txt|product_proj)/.*=0; .*=1"))
  assert "product_proj" not in frozen
  whole = trained(_stage2_config("--config.optim.lr_mults=.*=1"))
  assert {"img", "txt", "product_proj"} <= set(whole)
  with pytest.raises(config_files.ConfigError, match="not 'regex=mult'"):
    step_options.parse_lr_mults("img/.*=0; .*")
  assert optim.trains_any(abstract, ((".*", 1.0),),
                          step_config.PRODUCT_TOWER_BODY_REGEX)
  assert not optim.trains_any(abstract, TRAIN_PRODUCT_PROJ,
                              step_config.PRODUCT_TOWER_BODY_REGEX)


def test_stage1_config_freezes_the_query_side_visibly():
  from dashclip_jax.trainers import step_options  # pylint: disable=g-import-not-at-top
  mults = step_options.optim_config(_config("configs/stage1.py:tiny").optim,
                                    10).lr_mults
  assert mults == ((r"(query|query_proj|product_proj)/.*", 0.0), (".*", 1.0))


def test_removed_train_product_tower_key_is_a_one_line_error(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "dashclip_jax.main",
       f"--config={REPO}/configs/stage2.py:tiny",
       "--config.loss.train_product_tower=True",
       f"--workdir={tmp_path}"], capture_output=True, text=True, cwd=REPO,
      timeout=300)
  assert out.returncode != 0
  assert "train_product_tower" in out.stderr.strip().splitlines()[-1]


def test_product_table_equals_per_batch_features():
  """The trainer's table (eval pipeline over the train catalog) equals the
  step's own product forward on train batches (frozen: eval transform)."""
  from dashclip_jax.train import sharding  # pylint: disable=g-import-not-at-top
  from dashclip_jax.trainers import inputs  # pylint: disable=g-import-not-at-top
  from dashclip_jax.trainers import stage2  # pylint: disable=g-import-not-at-top
  config = _stage2_config()
  mesh = sharding.make_mesh([("data", -1), ("fsdp", 1), ("tensor", 1)])
  params = model_lib.unbox(model_lib.init_params(CFG, jax.random.key(0)))
  table, ok = stage2.product_feature_table(config, CFG, params, mesh)
  assert ok.all() and table.shape[1] == CFG.text.width
  frozen = jax.jit(ts.make_product_features_fn(
      CFG, step_config.StepConfig(deterministic=False,
                                  train_product_tower=False)))
  it = inputs.stage2_train(config.data, CFG, 8, seed=0, frozen_tower=True)
  for _ in range(2):
    batch = next(it)
    got = np.asarray(frozen(params, {k: batch[k] for k in
                                     ("image", "title_ids", "title_mask")},
                            jax.random.key(3)))
    np.testing.assert_allclose(got, table[batch["product_id"]], atol=1e-6)
  cached = next(inputs.stage2_train(config.data, CFG, 8, seed=0,
                                    frozen_tower=True,
                                    product_table=(table, ok)))
  assert "image" not in cached
  np.testing.assert_array_equal(cached["product_features"],
                                table[cached["product_id"]])


@pytest.mark.parametrize("variant", ["tiny", "demo", "fashion", "base"])
def test_every_variant_builds_and_its_freezing_rules_parse(variant):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from dashclip_jax.trainers import step_options  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "stage2_config", os.path.join(REPO, "configs", "stage2.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  abstract = model_lib.abstract_params(CFG)
  rules = step_options.optim_config(config.optim, 10).lr_mults
  tower = optim.trains_any(abstract, rules,
                           step_config.PRODUCT_TOWER_BODY_REGEX)
  # demo and fashion train the whole product tower (measured best); tiny
  # and base keep DashCLIP's frozen, cached tower body.
  assert tower == (variant in ("demo", "fashion"))
  assert "product_proj" in optim.trained_modules(abstract, rules)
  if config.stage1 is not None:
    s1_rules = step_options.optim_config(config.stage1.optim, 10).lr_mults
    assert "query" not in optim.trained_modules(abstract, s1_rules)
  assert config.data.source == ("synthetic" if variant in ("tiny", "demo")
                                else "fashion")


def test_zero_mined_negatives_is_in_batch_only():
  # data.num_negatives=0 gives (B, 0, Lq) negatives: same as none at all.
  cfg = step_config.StepConfig(deterministic=True, train_product_tower=False)
  empty = dict(BATCH, neg_query_ids=np.zeros((B, 0, LQ), np.int32),
               neg_query_mask=np.zeros((B, 0, LQ), np.int32),
               neg_valid=np.zeros((B, 0), bool))
  none = {k: v for k, v in BATCH.items() if not k.startswith("neg_")}
  _, m_empty = _one_step(cfg, TRAIN_PRODUCT_PROJ, batch=empty)
  _, m_none = _one_step(cfg, TRAIN_PRODUCT_PROJ, batch=none)
  _, m_with = _one_step(cfg, TRAIN_PRODUCT_PROJ)
  np.testing.assert_allclose(m_empty["loss"], m_none["loss"], rtol=1e-6)
  assert abs(float(m_with["loss"]) - float(m_none["loss"])) > 1e-4


def test_feature_table_is_built_only_when_it_pays():
  """'auto' weighs the table's one forward per product against the run's
  steps x batch product forwards; the explicit settings override it."""
  from dashclip_jax.runtime import config_files  # pylint: disable=g-import-not-at-top
  from dashclip_jax.trainers import stage2  # pylint: disable=g-import-not-at-top
  assert stage2.use_feature_table("auto", 400_000, 2 * 8) is False
  assert stage2.use_feature_table("auto", 9_000, 500 * 32) is True
  assert stage2.use_feature_table("auto", 100, 100) is True
  assert stage2.use_feature_table("always", 400_000, 16) is True
  assert stage2.use_feature_table(True, 400_000, 16) is True
  assert stage2.use_feature_table("never", 10, 10_000) is False
  assert stage2.use_feature_table("False", 10, 10_000) is False
  with pytest.raises(config_files.ConfigError, match="cache_product_features"):
    stage2.use_feature_table("sometimes", 10, 10)


def test_frozen_heldout_features_give_the_per_batch_forwards_metrics():
  """With a frozen tower and no table, the held-out products' features are
  computed once and projected each evaluation: the same metrics as running
  the product forward over them."""
  from dashclip_jax.train import sharding  # pylint: disable=g-import-not-at-top
  from dashclip_jax.trainers import eval_inputs  # pylint: disable=g-import-not-at-top
  from dashclip_jax.trainers import stage2  # pylint: disable=g-import-not-at-top
  config = _stage2_config()
  mesh = sharding.make_mesh([("data", -1), ("fsdp", 1), ("tensor", 1)])
  params = model_lib.unbox(model_lib.init_params(CFG, jax.random.key(1)))
  data = eval_inputs.stage2_eval(config.data, CFG, 8)
  fns = stage2.make_eval_fns(CFG, mesh)
  rows = stage2.eval_feature_rows(config, CFG, params, mesh, data)
  assert rows[0].shape == (len(data.product_rows), CFG.text.width)
  forward = stage2.evaluate(fns, params, data, mesh)
  cached = stage2.evaluate(fns, params, data, mesh, features=rows)
  assert forward["eval/products_ranked"] == len(data.product_rows)
  for k in stage2.EVAL_METRICS:
    assert cached[f"eval/{k}"] == pytest.approx(forward[f"eval/{k}"],
                                                abs=1e-6), k
