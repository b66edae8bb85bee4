"""run_info: a model's training config and evaluation, found from any of
its run's model directories (a main job's stage 2 included), as the model
card and the embeddings server's /v1/models report them."""

import json

from dashclip_jax.model import model_dir as model_dir_lib
from dashclip_jax.runtime import run_info


def _model(path):
  path.mkdir(parents=True)
  (path / model_dir_lib.METADATA_FILE).write_text("{}")
  return str(path)


def _evaluation(eval_dir, checkpoint, metrics):
  eval_dir.mkdir(parents=True)
  (eval_dir / "metrics.json").write_text(json.dumps(metrics))
  (eval_dir / "report.md").write_text(f"# Report\n\n- Checkpoint: "
                                      f"`{checkpoint}`\n")


def test_a_main_jobs_stage2_model_finds_the_jobs_config_and_eval(tmp_path):
  job = tmp_path / "job"
  model = _model(job / "stage2" / "models" / "500")
  _model(job / "stage2" / "models" / "0")  # The untrained start.
  (job / "config.json").write_text(json.dumps({"stage": "stage2"}))
  _evaluation(job / "eval", job / "stage2", {"dashclip": {"ndcg@10": 0.5}})
  for meta in ({}, {"provenance": {"workdir": str(job / "stage2")}}):
    assert run_info.run_workdir(model, meta) == str(job)
  assert run_info.training_config(str(job)) == {"stage": "stage2"}
  assert run_info.evaluation(str(job), model) == (
      str(job / "eval" / "metrics.json"), {"dashclip": {"ndcg@10": 0.5}})
  # The untrained start is not the model the evaluation names.
  assert run_info.evaluation(str(job), str(job / "stage2" / "models" / "0")
                             ) is None


def test_a_plain_run_and_a_bare_model_dir(tmp_path):
  run = tmp_path / "run"
  model = _model(run / "models" / "7")
  (run / "config.json").write_text("{}")
  _evaluation(run / "eval", model, {"x": {}})
  assert run_info.run_workdir(model, {}) == str(run)
  assert run_info.evaluation(str(run), model)[0] == str(
      run / "eval" / "metrics.json")
  bare = _model(tmp_path / "converted")
  assert run_info.run_workdir(bare, {}) is None
  assert run_info.evaluation(None, bare) is None
  # A stage-named dir without a job config above it: nothing.
  lone = _model(tmp_path / "stage2" / "models" / "3")
  assert run_info.run_workdir(lone, {}) is None
