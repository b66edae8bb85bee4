"""Training checkpoints: round trip, retention, damaged-latest fallback."""

import os
import shutil

import jax.numpy as jnp
import numpy as np

from dashclip_jax import checkpointing


def _state(step):
  return {"w": jnp.full((4, 3), float(step)), "step": jnp.asarray(step),
          "opt": {"mu": jnp.arange(5.0) * step}}


def _save_steps(ckpts, steps, metric=None):
  for s in steps:
    meta = {} if metric is None else {"eval/r@1": metric[s]}
    ckpts.save(s, _state(s), {"position": s}, meta, wait=True)


def test_round_trip_with_data_state(tmp_path):
  ckpts = checkpointing.TrainCheckpoints(str(tmp_path), keep=3)
  _save_steps(ckpts, [1, 2])
  state, data, meta = ckpts.restore(_state(0))
  np.testing.assert_array_equal(state["w"], np.full((4, 3), 2.0))
  np.testing.assert_array_equal(state["opt"]["mu"], np.arange(5.0) * 2)
  assert data == {"position": 2} and meta["step"] == 2
  ckpts.close()


def test_keeps_last_k_and_best(tmp_path):
  ckpts = checkpointing.TrainCheckpoints(str(tmp_path), keep=2,
                                         best_metric="eval/r@1")
  metric = {1: 0.2, 2: 0.9, 3: 0.1, 4: 0.3, 5: 0.4}
  _save_steps(ckpts, [1, 2, 3, 4, 5], metric)
  assert ckpts.steps() == [2, 4, 5]  # Last two plus the best (step 2).
  assert ckpts.best() == {"step": 2, "value": 0.9, "metric": "eval/r@1"}
  ckpts.close()


def test_damaged_latest_falls_back_with_warning(tmp_path, caplog):
  ckpts = checkpointing.TrainCheckpoints(str(tmp_path), keep=3)
  _save_steps(ckpts, [1, 2, 3])
  ckpts.close()
  # Damage step 3: remove the array data of its state item.
  state_dir = os.path.join(ckpts.directory, "3", "state")
  for entry in os.listdir(state_dir):
    path = os.path.join(state_dir, entry)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif not entry.startswith("_CHECKPOINT_METADATA"):
      os.remove(path)
  reopened = checkpointing.TrainCheckpoints(str(tmp_path), keep=3)
  with caplog.at_level("WARNING"):
    state, data, meta = reopened.restore(_state(0))
  assert meta["step"] == 2 and data == {"position": 2}
  np.testing.assert_array_equal(state["w"], np.full((4, 3), 2.0))
  assert any("3 is unreadable" in r.getMessage() for r in caplog.records)
  reopened.close()


def test_interrupted_save_leaves_last_good(tmp_path):
  """A temporary (unfinished) checkpoint dir is never taken for a real one."""
  ckpts = checkpointing.TrainCheckpoints(str(tmp_path), keep=3)
  _save_steps(ckpts, [1])
  ckpts.close()
  # What a kill -9 midway through an Orbax save leaves behind.
  tmp_dir = os.path.join(ckpts.directory, "2.orbax-checkpoint-tmp-123")
  os.makedirs(os.path.join(tmp_dir, "state"))
  reopened = checkpointing.TrainCheckpoints(str(tmp_path), keep=3)
  assert reopened.steps() == [1]
  _, _, meta = reopened.restore(_state(0))
  assert meta["step"] == 1
  reopened.close()


def test_no_checkpoint_returns_none(tmp_path):
  ckpts = checkpointing.TrainCheckpoints(str(tmp_path))
  assert ckpts.restore(_state(0)) is None
  ckpts.close()
