"""Trainer pieces that need no training run: NaN policy, data shards, state,
the in-loop eval figures."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dashclip_jax.runtime import config_files
from dashclip_jax.train import sharding
from dashclip_jax.trainers import inputs
from dashclip_jax.trainers import loop
from dashclip_jax.trainers import nonfinite
from dashclip_jax.trainers import resume
from dashclip_jax.trainers import stage1

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _toy_step(state, batch, rng):
  del rng
  loss = jnp.sum(batch["x"]) / jnp.sum(batch["x"] != 0)  # NaN on all-zero x.
  return {"w": state["w"] - 0.1 * loss}, {"loss": loss}


def test_nonfinite_loss_leaves_the_state_untouched():
  step = jax.jit(nonfinite.guard_nonfinite(_toy_step))
  state = {"w": jnp.ones(3)}
  good, m_good = step(state, {"x": jnp.ones(4)}, None)
  np.testing.assert_allclose(good["w"], 0.9 * np.ones(3))
  assert float(m_good["nonfinite"]) == 0.0
  kept, m_bad = step(state, {"x": jnp.zeros(4)}, None)
  np.testing.assert_array_equal(kept["w"], state["w"])
  assert float(m_bad["nonfinite"]) == 1.0


def test_nan_policy_stop_names_the_step_and_skip_counts():
  flags = [jnp.float32(0), jnp.float32(1), jnp.float32(1)]
  with pytest.raises(nonfinite.NonFiniteLossError, match="at step 12"):
    nonfinite.check_nonfinite([11, 12, 13], flags, "stop")
  assert nonfinite.check_nonfinite([11, 12, 13], flags, "skip") == 2
  assert nonfinite.check_nonfinite([11], flags[:1], "stop") == 0


def test_step_rng_depends_on_seed_and_step_only():
  a = jax.random.key_data(loop.step_rng(0, 5))
  np.testing.assert_array_equal(a, jax.random.key_data(loop.step_rng(0, 5)))
  assert not np.array_equal(a, jax.random.key_data(loop.step_rng(0, 6)))
  assert not np.array_equal(a, jax.random.key_data(loop.step_rng(1, 5)))


class _FakeShard:
  """Rows [shard, shard + count, ...) of 0..; a position as its state."""

  def __init__(self, batch, shard):
    self.batch, (self.index, self.count) = batch, shard
    self.pos = 0

  def __iter__(self):
    return self

  def __next__(self):
    rows = [self.index + self.count * (self.pos + i) for i in range(self.batch)]
    self.pos += self.batch
    return {"x": np.array(rows)}

  def get_state(self):
    return {"pos": self.pos}

  def set_state(self, state):
    self.pos = state["pos"]


def test_sharded_batches_concatenate_shards_and_round_trip_state():
  make = _FakeShard
  batches = inputs.ShardedBatches(make, global_batch=6, num_shards=2)
  first = next(batches)["x"]
  np.testing.assert_array_equal(first, [0, 2, 4, 1, 3, 5])
  state = json.loads(json.dumps(batches.get_state()))
  expected = next(batches)["x"]
  again = inputs.ShardedBatches(make, global_batch=6, num_shards=2)
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["x"], expected)


def test_sharded_batches_reject_mismatched_state_and_sizes():
  batches = inputs.ShardedBatches(_FakeShard, global_batch=4, num_shards=2)
  with pytest.raises(ValueError, match="num_shards"):
    batches.set_state({"shards": {"0": {"pos": 0}}})
  with pytest.raises(ValueError, match="not divisible"):
    inputs.ShardedBatches(_FakeShard, global_batch=5, num_shards=2)


def _stage1_eval(img, txt, ids, valid):
  """stage1.evaluate over one batch whose embeddings are given."""
  mesh = sharding.make_mesh([("data", 1), ("fsdp", 1), ("tensor", 1)],
                            devices=jax.devices()[:1])
  embed = jax.jit(lambda params, b: (b["img"], b["txt"], b["product_id"],
                                     b["valid"]))
  batch = {"img": np.asarray(img, np.float32),
           "txt": np.asarray(txt, np.float32),
           "product_id": np.asarray(ids, np.int32),
           "valid": np.asarray(valid, np.int32)}
  return stage1.evaluate(embed, {}, [batch], mesh)


def test_stage1_eval_is_hit_at_1_by_product_id():
  # Rows 0 and 1 are one product (id 7): a row ranking either first is a
  # hit (recall@1 would count it as half); row 2 (id 9) always ranks row 0
  # first (ties go to the lower row). The padding row would otherwise win
  # row 2's text.
  out = _stage1_eval(img=[[1, 0], [1, 0], [1, 0], [5, 5]],
                     txt=[[1, 0], [0, 1], [0, 1], [5, 5]],
                     ids=[7, 7, 9, 9], valid=[1, 1, 1, 0])
  np.testing.assert_allclose(out["eval/i2t_hit@1"], 2 / 3)
  np.testing.assert_allclose(out["eval/t2i_hit@1"], 2 / 3)
  np.testing.assert_allclose(out["eval/hit@1"], 2 / 3)
  assert not [k for k in out if "r@1" in k]


def test_stage1_eval_ranks_a_nan_score_last():
  # Text 0 (NaN) would be image 0's top-1 hit by index; ranked last, image
  # 0 finds text 1 (another product's): a miss.
  out = _stage1_eval(img=[[1, 0], [1, 0]], txt=[[np.nan, 0], [1, 0]],
                     ids=[1, 2], valid=[1, 1])
  np.testing.assert_allclose(out["eval/i2t_hit@1"], 0.5)


def test_best_metric_is_an_eval_metric_of_its_stage():
  s1 = config_files.load_config(os.path.join(REPO, "configs", "stage1.py"),
                                "tiny")
  s2 = config_files.load_config(os.path.join(REPO, "configs", "stage2.py"),
                                "tiny")
  assert s1.checkpoint.best_metric == "eval/hit@1"
  assert s2.checkpoint.best_metric == "eval/ndcg@10"
  logged = _stage1_eval([[1, 0]], [[1, 0]], [1], [1])
  resume.check_best_metric(s1.checkpoint.best_metric, logged)
  with pytest.raises(config_files.ConfigError,
                     match="best_metric='eval/ndcg@10' is not an eval metric"):
    resume.check_best_metric(s2.checkpoint.best_metric, logged)
  resume.check_best_metric(s2.checkpoint.best_metric, {})  # No eval data.
