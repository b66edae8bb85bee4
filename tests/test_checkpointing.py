"""Training checkpoints: round trip, retention (last K + best),
damaged-latest fallback."""

import gc
import logging
import os
import re
import shutil
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from dashclip_jax.train import checkpoint_failures
from dashclip_jax.train import checkpoints


def _state(step):
  return {"w": jnp.full((4, 3), float(step)), "step": jnp.asarray(step),
          "opt": {"mu": jnp.arange(5.0) * step}}


def _save_steps(ckpts, steps, metric=None):
  """Saves `steps`; `metric` {step: eval/r@1} (steps not in it: no eval)."""
  for s in steps:
    meta = {} if metric is None or s not in metric else {
        "eval/r@1": metric[s]}
    ckpts.save(s, _state(s), {"position": s}, meta, wait=True)


def test_round_trip_with_data_state(tmp_path):
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  _save_steps(ckpts, [1, 2])
  state, data, meta = ckpts.restore(_state(0))
  np.testing.assert_array_equal(state["w"], np.full((4, 3), 2.0))
  np.testing.assert_array_equal(state["opt"]["mu"], np.arange(5.0) * 2)
  assert data == {"position": 2} and meta["step"] == 2
  ckpts.close()


def _best_checkpoints(tmp_path, mode="max"):
  return checkpoints.TrainCheckpoints(str(tmp_path), keep=2,
                                      best_metric="eval/r@1",
                                      best_mode=mode)


def test_keeps_last_k_and_best(tmp_path):
  ckpts = _best_checkpoints(tmp_path)
  metric = {1: 0.2, 2: 0.9, 3: 0.1, 4: 0.3, 5: 0.4}
  _save_steps(ckpts, [1, 2, 3, 4, 5], metric)
  assert ckpts.steps() == [2, 4, 5]  # Last two plus the best (step 2).
  assert ckpts.best() == {"step": 2, "value": 0.9, "metric": "eval/r@1"}
  ckpts.close()


def test_best_by_lowest_in_min_mode(tmp_path):
  ckpts = _best_checkpoints(tmp_path, mode="min")
  _save_steps(ckpts, [1, 2, 3, 4], {1: 0.5, 2: 0.1, 3: 0.7, 4: 0.6})
  assert ckpts.steps() == [2, 3, 4]
  assert ckpts.best()["step"] == 2
  ckpts.close()


def test_best_survives_a_reopen(tmp_path):
  ckpts = _best_checkpoints(tmp_path)
  _save_steps(ckpts, [1, 2, 3], {1: 0.2, 2: 0.9, 3: 0.1})
  ckpts.close()
  reopened = _best_checkpoints(tmp_path)
  assert reopened.best() == {"step": 2, "value": 0.9, "metric": "eval/r@1"}
  # The resumed run's saves keep step 2 until a better one replaces it.
  _save_steps(reopened, [4, 5], {4: 0.3})
  assert reopened.steps() == [2, 4, 5]
  _save_steps(reopened, [6], {6: 0.95})
  assert reopened.steps() == [5, 6] and reopened.best()["step"] == 6
  _save_steps(reopened, [7, 8])
  assert reopened.steps() == [6, 7, 8]
  reopened.close()


def test_steps_without_the_metric_are_never_best(tmp_path, caplog):
  ckpts = _best_checkpoints(tmp_path)
  _save_steps(ckpts, [1, 2])  # No eval yet: nothing is best ...
  assert ckpts.best() is None and ckpts.steps() == [1, 2]
  with caplog.at_level("WARNING"):
    _save_steps(ckpts, [3, 4, 5, 6], {4: 0.1})  # ... then only step 4.
  assert ckpts.steps() == [4, 5, 6]
  assert ckpts.best() == {"step": 4, "value": 0.1, "metric": "eval/r@1"}
  # Saves between evals are not reported as missing their metric.
  assert not [r for r in caplog.records if "metric" in r.getMessage()]
  ckpts.close()
  assert _best_checkpoints(tmp_path).best()["step"] == 4


def test_older_steps_without_a_metrics_item_are_not_kept_forever(tmp_path):
  old = checkpoints.TrainCheckpoints(str(tmp_path), keep=5)  # No metric.
  _save_steps(old, [1, 2], {1: 0.9, 2: 0.8})
  old.close()
  ckpts = _best_checkpoints(tmp_path)
  assert ckpts.best() is None
  _save_steps(ckpts, [3, 4], {3: 0.1})
  assert ckpts.steps() == [3, 4] and ckpts.best()["step"] == 3
  ckpts.close()


def test_without_best_metric_keeps_last_k_only(tmp_path):
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=2)
  _save_steps(ckpts, [1, 2, 3], {1: 0.9, 2: 0.1, 3: 0.2})
  assert ckpts.steps() == [2, 3] and ckpts.best() is None
  ckpts.close()


def test_damaged_latest_falls_back_with_warning(tmp_path, caplog):
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
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
  reopened = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  with caplog.at_level("WARNING"):
    state, data, meta = reopened.restore(_state(0))
  assert meta["step"] == 2 and data == {"position": 2}
  np.testing.assert_array_equal(state["w"], np.full((4, 3), 2.0))
  assert any("3 is unreadable" in r.getMessage() for r in caplog.records)
  reopened.close()


def test_interrupted_save_leaves_last_good(tmp_path):
  """A temporary (unfinished) checkpoint dir is never taken for a real one."""
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  _save_steps(ckpts, [1])
  ckpts.close()
  # What a kill -9 midway through an Orbax save leaves behind.
  tmp_dir = os.path.join(ckpts.directory, "2.orbax-checkpoint-tmp-123")
  os.makedirs(os.path.join(tmp_dir, "state"))
  reopened = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  assert reopened.steps() == [1]
  _, _, meta = reopened.restore(_state(0))
  assert meta["step"] == 1
  reopened.close()


def test_no_checkpoint_returns_none(tmp_path):
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path))
  assert ckpts.restore(_state(0)) is None
  ckpts.close()


# ---------------------------------------------------------------------------
# A checkpoint that does not fit the config vs a damaged one; what changed.


def _damage(ckpts, step, keep_tree_metadata=False):
  """Removes the array data of a step's state item (keeps its markers and,
  with `keep_tree_metadata`, the shapes it claims to hold)."""
  state_dir = os.path.join(ckpts.directory, str(step), "state")
  kept = ("_CHECKPOINT_METADATA",) + (
      ("_METADATA", "_sharding", "array_metadatas", "manifest.ocdbt",
       "commit_success") if keep_tree_metadata else ())
  for entry in os.listdir(state_dir):
    path = os.path.join(state_dir, entry)
    if entry.startswith(kept):
      continue
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)


CONFIG = {"loss": {"queue_size": 0, "alpha": 0.4}, "optim": {"lr": 1e-3},
          "train": {"total_steps": 6}, "mesh": [("data", -1), ("fsdp", 1)]}


def _with(config, **changes):
  out = checkpoints.flatten_config(config)
  out.update(changes)
  return out


def test_state_that_does_not_fit_names_the_changed_keys(tmp_path, caplog):
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), config=CONFIG)
  _save_steps(ckpts, [1, 2])
  ckpts.close()
  # The new config adds a queue to the state: neither step fits it.
  bigger = {**_state(0), "queue": {"img": jnp.zeros((16, 3))}}
  reopened = checkpoints.TrainCheckpoints(
      str(tmp_path), config=_with(CONFIG, **{"loss.queue_size": 16}))
  with caplog.at_level("WARNING"), pytest.raises(
      checkpoints.StateMismatchError) as e:
    reopened.restore(bigger)
  msg = str(e.value)
  assert "\n" not in msg and f"{ckpts.directory}/2" in msg
  assert "loss.queue_size 0 -> 16" in msg and "queue" in msg
  assert "optim.lr" not in msg  # Unchanged keys are not named.
  # Not taken for damage: no fallback, nothing moved aside.
  assert not any("unreadable" in r.getMessage() for r in caplog.records)
  assert reopened.steps() == [1, 2]
  assert sorted(os.listdir(ckpts.directory)) == ["1", "2"]
  # A changed shape is a mismatch too.
  wider = {**_state(0), "w": jnp.zeros((4, 5))}
  with pytest.raises(checkpoints.StateMismatchError, match=r"w \(4, 3\)"):
    reopened.restore(wider)
  reopened.close()


def test_resume_with_changed_values_logs_them(tmp_path, caplog):
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), config=CONFIG)
  _save_steps(ckpts, [1])
  ckpts.close()
  changed = _with(CONFIG, **{"optim.lr": 5e-4, "train.total_steps": 8})
  reopened = checkpoints.TrainCheckpoints(str(tmp_path), config=changed)
  with caplog.at_level("INFO", logger="dashclip_jax.train.checkpoints"):
    state, _, meta = reopened.restore(_state(0))
  assert meta["step"] == 1
  np.testing.assert_array_equal(state["w"], np.full((4, 3), 1.0))
  lines = [r.getMessage() for r in caplog.records if "changed" in
           r.getMessage()]
  assert len(lines) == 1, lines
  assert "optim.lr 0.001 -> 0.0005" in lines[0]
  assert "train.total_steps 6 -> 8" in lines[0] and "alpha" not in lines[0]
  reopened.close()


def test_older_checkpoint_without_config(tmp_path):
  old = checkpoints.TrainCheckpoints(str(tmp_path))  # Writes no config.
  _save_steps(old, [1])
  old.close()
  new = checkpoints.TrainCheckpoints(str(tmp_path), config=CONFIG)
  _, _, meta = new.restore(_state(0))  # Fits: resumes.
  assert meta["step"] == 1
  with pytest.raises(checkpoints.StateMismatchError,
                     match="without its config"):
    new.restore({**_state(0), "queue": {"img": jnp.zeros((16, 3))}})
  new.close()


@pytest.mark.parametrize("keep_tree_metadata", [False, True])
def test_damaged_newest_is_moved_aside_and_its_step_saved_again(
    tmp_path, caplog, keep_tree_metadata):
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  _save_steps(ckpts, [1, 2, 3])
  ckpts.close()
  _damage(ckpts, 3, keep_tree_metadata)
  rerun = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  with caplog.at_level("WARNING"):
    _, _, meta = rerun.restore(_state(0))
  assert meta["step"] == 2
  assert any("3.damaged" in r.getMessage() for r in caplog.records)
  assert os.path.isdir(os.path.join(ckpts.directory, "3.damaged"))
  # Training passes step 3 again: its save must succeed ...
  _save_steps(rerun, [3, 4])
  rerun.close()
  # ... and a second rerun resumes from the newest.
  again = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  state, _, meta = again.restore(_state(0))
  assert meta["step"] == 4 and again.steps() == [2, 3, 4]
  np.testing.assert_array_equal(state["w"], np.full((4, 3), 4.0))
  _save_steps(again, [5])
  again.close()
  assert os.path.isdir(os.path.join(ckpts.directory, "3.damaged"))


def test_set_aside_run_moves_the_previous_run(tmp_path):
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path))
  _save_steps(ckpts, [1])
  ckpts.close()
  (tmp_path / "models" / "0").mkdir(parents=True)
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
  (tmp_path / "config.json").write_text("{}")
  moved = checkpoints.set_aside_run(str(tmp_path))
  assert moved and os.path.dirname(moved) == str(tmp_path)
  assert sorted(os.listdir(moved)) == ["checkpoints", "metrics.jsonl",
                                       "models"]
  assert (tmp_path / "config.json").exists()  # Not part of a run's output.
  assert checkpoints.TrainCheckpoints(str(tmp_path)).steps() == []
  assert checkpoints.set_aside_run(str(tmp_path / "empty")) is None


def test_truncated_array_files_fall_back_without_orbax_tracebacks(
    tmp_path, monkeypatch, caplog):
  """Array data cut short (a partial copy): the fallback warns once, and the
  aborted reads' reports (hundreds of tracebacks on stderr) are dropped."""
  reports = []  # What would be printed: the hook the restore finds.
  monkeypatch.setattr(sys, "unraisablehook", reports.append)
  # Random arrays, above Orbax's 1 KiB inline limit even compressed, so
  # their bytes live in d/.
  big = lambda step: {f"w{i}": jnp.asarray(np.random.default_rng(
      step * 8 + i).normal(size=(64, 64)), jnp.float32) for i in range(8)}
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  for step in (1, 2):
    ckpts.save(step, big(step), {}, {}, wait=True)
  ckpts.close()
  data_dir = os.path.join(ckpts.directory, "2", "state", "ocdbt.process_0",
                          "d")
  for name in os.listdir(data_dir):
    path = os.path.join(data_dir, name)
    with open(path, "rb") as f:
      head = f.read(10)
    with open(path, "wb") as f:
      f.write(head)
  rerun = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  with caplog.at_level("WARNING"):
    state, _, meta = rerun.restore(big(0))
  rerun.close()
  gc.collect()  # Aborted reads report when their coroutines are collected.
  assert meta["step"] == 1
  np.testing.assert_array_equal(state["w7"], big(1)["w7"])
  assert not reports, [str(r.exc_value)[:200] for r in reports[:3]]
  # Nor asyncio's "exception was never retrieved" records of the same reads;
  # the one warning names the step without TensorStore's spec dump.
  messages = [r.getMessage() for r in caplog.records]
  assert not [m for m in messages if "never retrieved" in m], messages[:3]
  unreadable = [m for m in messages if "is unreadable" in m]
  assert len(unreadable) == 1 and "TensorStore" not in unreadable[0]
  # Reports from elsewhere still get through.
  sys.unraisablehook(types.SimpleNamespace(exc_value=ValueError("other"),
                                           exc_traceback=None))
  assert len(reports) == 1


def test_only_reports_raised_inside_orbax_are_dropped():
  """The filter behind the quiet fallback: asyncio records (and unraisable
  reports) whose exception passed through Orbax code go; others stay."""
  def raised_in(filename):
    try:
      exec(compile("raise ValueError('read failed')", filename, "exec"))  # pylint: disable=exec-used
    except ValueError as e:
      return e
  orbax_file = os.path.join(os.sep, "site-packages", "orbax", "x.py")
  record = lambda e: logging.LogRecord(
      "asyncio", logging.ERROR, __file__, 1, "Future exception was never "
      "retrieved", None, (type(e), e, e.__traceback__))
  drop = checkpoint_failures.DropOrbaxReads()
  assert not drop.filter(record(raised_in(orbax_file)))
  assert drop.filter(record(raised_in("/work/elsewhere.py")))
  assert drop.filter(logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                                       "no exception", None, None))


DISK_FULL = {
    # What Orbax raised on a full 2 MB tmpfs.
    "tensorstore": lambda: ValueError(
        'RESOURCE_EXHAUSTED: Error writing "a/0" in OCDBT database at local '
        'file "/w/checkpoints/3.orbax-checkpoint-tmp/state.orbax-checkpoint-'
        'tmp/ocdbt.process_0/": Failed writing: "/w/checkpoints/3.orbax-'
        'checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/d/944041":'
        ' Failed to write 268655 bytes to file 4: No space left on device '
        "[os_error_code='28']"),
    "oserror_cause": lambda: _caused(RuntimeError("commit failed"),
                                     OSError(28, "No space left on device")),
}


def _caused(error, cause):
  error.__cause__ = cause
  return error


@pytest.mark.parametrize("kind", sorted(DISK_FULL))
def test_a_full_disk_is_one_line_naming_where_and_how_much(tmp_path, kind,
                                                           monkeypatch):
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  _save_steps(ckpts, [1])

  def full(*args, **kwargs):
    raise DISK_FULL[kind]()
  monkeypatch.setattr(ckpts._mngr, "save", full)
  with pytest.raises(checkpoints.DiskFullError) as e:
    ckpts.save(2, _state(2), {"position": 2})
  msg = str(e.value)
  assert "\n" not in msg and e.value.__cause__ is None
  assert f"saving a checkpoint in {ckpts.directory} failed" in msg
  assert re.search(r"with [\d,]+ [KM]B free there, and a checkpoint takes "
                   r"about [\d,]+ [KM]B", msg), msg
  assert "step 1 is the last good one" in msg
  ckpts.close()
  # The main job prints it as its one line.
  from dashclip_jax import main  # pylint: disable=g-import-not-at-top
  assert checkpoints.DiskFullError in main.one_line_errors()


@pytest.mark.parametrize("error", [
    "a bug", "RESOURCE_EXHAUSTED: Out of memory while trying to allocate"])
def test_other_save_errors_keep_their_traceback(tmp_path, monkeypatch, error):
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path))

  def broken(*args, **kwargs):
    raise ValueError(error)
  monkeypatch.setattr(ckpts._mngr, "save", broken)
  with pytest.raises(ValueError, match=f"^{error}$"):
    ckpts.save(1, _state(1), {})
  ckpts.close()


def test_orbax_disk_full_log_records_are_dropped():
  def record(path, exc):
    return logging.LogRecord("absl", logging.ERROR, path, 1, "save failed",
                             None, (type(exc), exc, None))
  orbax_file = f"{os.sep}site-packages{os.sep}orbax{os.sep}checkpoint.py"
  keep = checkpoint_failures.DISK_FULL_FILTER.filter
  assert not keep(record(orbax_file, DISK_FULL["tensorstore"]()))
  assert keep(record(orbax_file, ValueError("another failure")))
  assert keep(record("/elsewhere/x.py", DISK_FULL["tensorstore"]()))


def test_partial_saves_are_cleared_on_the_next_start(tmp_path):
  ckpts = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  _save_steps(ckpts, [1])
  ckpts.close()
  # What a full disk (or kill -9) mid-save leaves, in Orbax's two spellings;
  # and a damaged step set aside, which is not Orbax's to remove.
  planted = ["3.orbax-checkpoint-tmp", "4.orbax-checkpoint-tmp-1717171717"]
  for name in planted:
    os.makedirs(os.path.join(ckpts.directory, name, "state"))
    with open(os.path.join(ckpts.directory, name, "state", "d"), "wb") as f:
      f.write(b"partial")
  os.makedirs(os.path.join(ckpts.directory, "2.damaged"))
  reopened = checkpoints.TrainCheckpoints(str(tmp_path), keep=3)
  assert sorted(os.listdir(reopened.directory)) == ["1", "2.damaged"]
  assert reopened.steps() == [1]
  _save_steps(reopened, [3])  # The step that failed saves again.
  assert reopened.steps() == [1, 3]
  reopened.close()
