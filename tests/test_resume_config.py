"""Resume after a config change: a state that no longer fits stops with one
line naming the changed keys, `checkpoint.restart` starts over without
losing the old run, and other changes resume and are named in the log.

The states are the stage-1 trainer's own (`step_options.make_state` from the
tiny config), saved and restored through `resume.open_checkpoints` and
`resume.restore` as `stage1.train` calls them (as zeros of their shapes:
nothing is compiled).
"""

import functools
import os
import pathlib

import jax
import numpy as np
import pytest

from dashclip_jax.runtime import config_files
from dashclip_jax.trainers import init_checkpoint
from dashclip_jax.trainers import resume
from dashclip_jax.trainers import stage1
from dashclip_jax.trainers import step_options

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _stage1_config(**overrides):
  return config_files.load_config(ROOT / "configs" / "stage1.py", "tiny",
                                  overrides)


@functools.lru_cache(maxsize=None)
def _abstract_state(momentum, queue_size):
  config = _stage1_config(**{"loss.momentum": momentum,
                             "loss.queue_size": queue_size})
  mc = init_checkpoint.model_config_from(config.model, None)
  return jax.eval_shape(lambda: step_options.make_state(
      mc, stage1.step_config(config.loss, 1, 96, config.train.batch_size),
      step_options.optim_config(config.optim, config.train.total_steps),
      config.seed, None)[1])


def _state(config):
  """The trainer's TrainState for `config`, as zeros of the right shapes
  (its structure is what matters here; nothing is compiled)."""
  abstract = _abstract_state(config.loss.momentum, config.loss.queue_size)
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)


def _filled_state(config, seed=1):
  """`_state(config)` with distinct non-zero values in every leaf (step 7),
  so a restore that reads nothing cannot pass for one that reads it."""
  rng = np.random.default_rng(seed)
  leaf = lambda x: (rng.integers(1, 1000, x.shape) if x.dtype.kind == "i"
                    else rng.uniform(0.5, 2.0, x.shape)).astype(x.dtype)
  return jax.tree.map(leaf, _state(config)).replace(step=np.int32(7))


class _Data:
  """A train iterator's checkpointable state, nothing else."""

  def __init__(self):
    self.state = None

  def get_state(self):
    return {"shards": {"0": {"pos": 3}}}

  def set_state(self, state):
    self.state = state


def _save(config, workdir, step=2, state=None):
  ckpts = resume.open_checkpoints(config, str(workdir))
  ckpts.save(step, _state(config) if state is None else state,
             _Data().get_state(), {"seed": 0}, wait=True)
  ckpts.close()


QUEUE = {"loss.momentum": 0.995, "loss.queue_size": 16}


def test_state_change_stops_in_one_line_naming_keys_and_restart(tmp_path):
  _save(_stage1_config(), tmp_path)
  changed = _stage1_config(**QUEUE)
  ckpts = resume.open_checkpoints(changed, str(tmp_path))
  with pytest.raises(config_files.ConfigError) as e:
    resume.restore(ckpts, _state(changed), _Data())
  ckpts.close()
  msg = str(e.value)
  assert "\n" not in msg and "checkpoints/2 does not fit" in msg, msg
  assert "loss.queue_size 0 -> 16" in msg and "loss.momentum 0.0 -> 0.995" \
      in msg, msg
  assert "--config.checkpoint.restart=True" in msg, msg
  assert "optim.lr" not in msg
  # Nothing was touched: the old run is still there to resume.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def test_restart_moves_the_old_run_aside_and_starts_fresh(tmp_path, caplog):
  _save(_stage1_config(), tmp_path)
  (tmp_path / "models" / "2").mkdir(parents=True)
  restart = _stage1_config(**QUEUE, **{"checkpoint.restart": True})
  with caplog.at_level("WARNING", logger="dashclip_jax"):
    ckpts = resume.open_checkpoints(restart, str(tmp_path))
  state = _state(restart)
  _, resumed = resume.restore(ckpts, state, _Data())
  assert not resumed and ckpts.steps() == []
  moved = [r.getMessage() for r in caplog.records if "restart" in
           r.getMessage()]
  assert len(moved) == 1 and "before_restart_" in moved[0], moved
  old = pathlib.Path(moved[0].split()[-1])
  assert (old / "checkpoints" / "2").is_dir() and (old / "models" / "2") \
      .is_dir()
  assert not (tmp_path / "models").exists()
  ckpts.save(1, state, _Data().get_state(), {}, wait=True)
  ckpts.close()
  # The new run resumes without `restart` (and does not list it as a change).
  again = resume.open_checkpoints(_stage1_config(**QUEUE), str(tmp_path))
  with caplog.at_level("INFO", logger="dashclip_jax.train.checkpoints"):
    _, resumed = resume.restore(again, _state(_stage1_config(**QUEUE)),
                                _Data())
  again.close()
  assert resumed
  assert not any("changed config" in r.getMessage() for r in caplog.records)


def test_changed_values_that_fit_resume_and_are_logged(tmp_path, caplog):
  saved = _filled_state(_stage1_config())
  _save(_stage1_config(), tmp_path, state=saved)
  changed = _stage1_config(**{"optim.lr": 5e-4, "train.total_steps": 8})
  ckpts = resume.open_checkpoints(changed, str(tmp_path))
  data = _Data()
  with caplog.at_level("INFO"):
    state, resumed = resume.restore(ckpts, _state(changed), data)
  ckpts.close()
  assert resumed and int(state.step) == 7 and isinstance(
      state, type(_state(changed))) and data.state == {
      "shards": {"0": {"pos": 3}}}
  # Every leaf is the saved one (the restore started from zeros).
  assert jax.tree.structure(state) == jax.tree.structure(saved)
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(saved)):
    np.testing.assert_array_equal(np.asarray(got), want)
  lines = [r.getMessage() for r in caplog.records
           if "changed config" in r.getMessage()]
  assert len(lines) == 1, lines
  assert "optim.lr 0.001 -> 0.0005" in lines[0]
  assert "train.total_steps 6 -> 8" in lines[0]


def test_stage1_of_a_main_job_names_its_own_restart_option(tmp_path):
  (tmp_path / "config.json").write_text('{"stage": "stage2"}')
  workdir = tmp_path / "stage1"  # Where dashclip_jax.main runs stage 1.
  _save(_stage1_config(), workdir)
  changed = _stage1_config(**QUEUE)
  ckpts = resume.open_checkpoints(changed, str(workdir))
  with pytest.raises(config_files.ConfigError,
                     match=r"--config\.stage1\.checkpoint\.restart=True"):
    resume.restore(ckpts, _state(changed), _Data())
  ckpts.close()
