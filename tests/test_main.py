"""The main job end to end: CLI errors, resume after kill -9, stage-2 inits,
two processes over jax.distributed, and the full tiny stage 1 -> 2 -> eval.

Runs go through `python -m dashclip_jax.main` in subprocesses (a kill -9 and
jax.distributed need real processes). They share a persistent XLA cache, so
a rerun of the same config does not compile again.
"""

import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import tiny_job_checks as checks

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGE1_TINY = "--config=configs/stage1.py:tiny"
STAGE2_TINY = "--config=configs/stage2.py:tiny"


@pytest.fixture
def xla_cache():
  # The run-wide cache (conftest.py): these jobs compile programs other
  # tests' main jobs compile too (the docs' tiny job, WiSE-FT's).
  return os.environ["JAX_COMPILATION_CACHE_DIR"]


def _env(xla_cache, devices):
  return dict(
      os.environ,
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
      JAX_COMPILATION_CACHE_DIR=xla_cache,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
      HF_HUB_OFFLINE="1")


def _cmd(workdir, *args):
  return [sys.executable, "-m", "dashclip_jax.main", f"--workdir={workdir}",
          *args]


def _main(xla_cache, workdir, *args, devices=1, timeout=600):
  out = subprocess.run(_cmd(workdir, *args), cwd=ROOT,
                       env=_env(xla_cache, devices), capture_output=True,
                       text=True, timeout=timeout, check=False)
  return out


def _ok(out):
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def _last_line(text):
  lines = [l for l in text.strip().splitlines() if l.strip()]
  return lines[-1] if lines else ""


# ---------------------------------------------------------------------------
# Clear one-line errors.


def test_config_typo_is_a_one_line_error(xla_cache, tmp_path):
  out = _main(xla_cache, tmp_path, STAGE1_TINY,
              "--config.train.batch_sise=4")
  assert out.returncode != 0
  last = _last_line(out.stderr)
  assert "batch_sise" in last and "Traceback" not in out.stderr, out.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_unknown_variant_is_a_one_line_error(xla_cache, tmp_path):
  out = _main(xla_cache, tmp_path, "--config=configs/stage1.py:huge")
  assert out.returncode != 0
  assert "huge" in _last_line(out.stderr) and "Traceback" not in out.stderr


def test_missing_init_checkpoint_is_a_one_line_error(xla_cache, tmp_path):
  missing = tmp_path / "no_such_checkpoint"
  out = _main(xla_cache, tmp_path / "run", STAGE2_TINY,
              f"--config.init.checkpoint={missing}")
  assert out.returncode != 0
  last = _last_line(out.stderr)
  assert last.startswith("dashclip_jax.main: error: init checkpoint")
  assert str(missing) in last and "Traceback" not in out.stderr


# ---------------------------------------------------------------------------
# Resume.


def _checkpoint_steps(workdir):
  d = workdir / "checkpoints"
  if not d.is_dir():
    return []
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def test_kill9_then_rerun_equals_uninterrupted(xla_cache, tmp_path):
  steps = 24  # ~7 s of steps after the first checkpoint: the kill lands.
  args = (STAGE1_TINY, f"--config.train.total_steps={steps}",
          "--config.checkpoint.every_steps=3", "--config.train.eval_every=20",
          "--config.train.log_every=4")
  ref = tmp_path / "uninterrupted"
  _ok(_main(xla_cache, ref, *args))

  run = tmp_path / "killed"
  seed = random.randrange(1 << 30)
  delay = random.Random(seed).uniform(0.0, 0.5)
  proc = subprocess.Popen(_cmd(run, *args), cwd=ROOT,
                          env=_env(xla_cache, 1), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not _checkpoint_steps(run) and proc.poll() is None:
    assert time.time() < deadline, "no checkpoint within 300 s"
    time.sleep(0.05)
  time.sleep(delay)
  proc.send_signal(signal.SIGKILL)
  _, err = proc.communicate()
  assert proc.returncode == -signal.SIGKILL, (
      f"the run ended before the kill (delay {delay:.2f}s): {err[-2000:]}")
  assert not (run / "models" / str(steps)).exists()

  resumed = _ok(_main(xla_cache, run, *args))
  assert "resumed from" in resumed.stderr, resumed.stderr[-2000:]
  checks.assert_trees_equal(checks.params(run / "models" / str(steps)),
                            checks.params(ref / "models" / str(steps)),
                            f"resumed (killed after {delay:.2f}s, seed "
                            f"{seed}) vs uninterrupted")
  # The metrics log continues where it stopped: the last step is there once.
  lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text()
           .splitlines()]
  finals = [l for l in lines if l["step"] == steps and "train/loss" in l]
  assert len(finals) == 1


def test_sigterm_saves_and_rerun_resumes(xla_cache, tmp_path):
  steps = 30  # SIGTERM is sent after step 1; ~10 s of steps remain.
  args = (STAGE1_TINY, f"--config.train.total_steps={steps}",
          "--config.checkpoint.every_steps=1000", "--config.train.eval_every=1000",
          "--config.train.log_every=1")
  run = tmp_path / "preempted"
  proc = subprocess.Popen(_cmd(run, *args), cwd=ROOT, env=_env(xla_cache, 1),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 300
  log = run / "metrics.jsonl"
  while proc.poll() is None and not (log.exists() and
                                     "train/loss" in log.read_text()):
    assert time.time() < deadline, "no training step within 300 s"
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err[-2000:]
  saved = _checkpoint_steps(run)
  assert len(saved) == 1 and 0 < saved[0] < steps, (saved, err[-2000:])
  assert "pre-empted at step" in err
  # Unfinished: the workdir is not a model (only its untrained models/0),
  # so stage 2 would refuse it as its init checkpoint.
  from dashclip_jax.model import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(FileNotFoundError, match="untrained start"):
    model_dir_lib.resolve_model_dir(str(run))
  # The rerun resumes from the saved step and finishes.
  more = steps - saved[0]
  resumed = _ok(_main(xla_cache, run, *args[:-1], "--config.train.log_every=50",
                      timeout=600))
  assert f"at step {saved[0]}" in resumed.stderr
  assert (run / "models" / str(steps)).is_dir(), more


def _train_lines(metrics_jsonl):
  return [l for l in metrics_jsonl.read_text().splitlines()
          if "train/loss" in l]


def test_sigterm_in_the_final_eval_stops_at_once_and_rerun_evaluates(
    xla_cache, tmp_path):
  """SIGTERM once the final evaluation started: exit 143 at once with a line
  saying so (it was ignored: ~70 s more of evaluation, exit 0), and the
  rerun trains nothing and only evaluates, as after a kill -9."""
  run = tmp_path / "w"
  proc = subprocess.Popen(_cmd(run, STAGE2_TINY), cwd=ROOT,
                          env=_env(xla_cache, 1), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  err = []
  for line in proc.stderr:  # Ends at the process's end at the latest.
    err.append(line)
    if "=== evaluation (in" in line:
      proc.send_signal(signal.SIGTERM)
      break
  err.append(proc.communicate(timeout=300)[1])
  err = "".join(err)
  assert proc.returncode == 143, err[-3000:]
  assert "SIGTERM during the final evaluation: stopped at once" in err
  assert not (run / "eval" / "metrics.json").exists()
  trained = {s: _train_lines(run / s / "metrics.jsonl")
             for s in ("stage1", "stage2")}
  assert all(trained.values()), trained

  rerun = _ok(_main(xla_cache, run, STAGE2_TINY))
  assert "=== evaluation (in" in rerun.stderr
  for stage, lines in trained.items():  # Not one more training step.
    assert _train_lines(run / stage / "metrics.jsonl") == lines, stage
  metrics = json.loads((run / "eval" / "metrics.json").read_text())
  assert "ndcg@10" in metrics["dashclip"]


# ---------------------------------------------------------------------------
# Stage 2's init checkpoints.


def test_stage2_starts_from_a_converted_blip_checkpoint(
    xla_cache, tmp_path, tiny_hf_blip_config):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from dashclip_jax import convert  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  transformers.BlipForImageTextRetrieval(tiny_hf_blip_config).save_pretrained(
      tmp_path / "hf")
  convert.convert(str(tmp_path / "hf"), str(tmp_path / "blip"), size="tiny")
  blip = checks.params(tmp_path / "blip")
  # lr 0: the exported model is exactly what stage 2 started from.
  _ok(_main(xla_cache, tmp_path / "s2", STAGE2_TINY,
            f"--config.init.checkpoint={tmp_path / 'blip'}",
            "--config.train.total_steps=2", "--config.optim.lr=0",
            "--config.final_eval.enabled=false"))
  start = checks.params(tmp_path / "s2" / "models" / "2")
  for tower in ("img", "txt", "vision_proj", "text_proj", "itm_head"):
    checks.assert_trees_equal(start[tower], blip[tower], tower)
  # DashCLIP: the query tower starts as the (unimodal) text encoder.
  checks.assert_trees_equal(start["query"],
                            checks.without_cross_attention(blip["txt"]),
                            "query <- txt")
  checks.assert_trees_equal(start["query_proj"], blip["product_proj"],
                            "query_proj <- product_proj")


# ---------------------------------------------------------------------------
# Multi-process.


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(xla_cache, tmp_path):
  """2 processes x 2 CPU devices == 1 process x 4 devices, same global batch.

  data.num_shards=2 makes the one-process run read the two processes'
  shards and concatenate them, i.e. the same global batches. The two
  processes run the main job (stage 1, 2 steps of stage 2, the final
  evaluation and export); its metrics and export are checked against one
  process evaluating the same model.
  """
  stage1 = ("--config.train.total_steps=4", "--config.checkpoint.every_steps=2",
            "--config.train.eval_every=2", "--config.train.log_every=2")
  _ok(_main(xla_cache, tmp_path / "one", STAGE1_TINY, *stage1,
            "--config.data.num_shards=2", devices=4))
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(tmp_path / "two", STAGE2_TINY, "--config.data.num_shards=2",
           *[a.replace("--config.", "--config.stage1.") for a in stage1],
           "--config.train.total_steps=2", "--config.train.eval_every=2",
           "--config.final_eval.plots.enabled=false",
           # The gallery and probes run on process 0 alone, from the same
           # gathered embeddings the export below checks; off for time.
           "--config.final_eval.gallery.enabled=false",
           "--config.final_eval.probes.aisle=false",
           "--config.final_eval.probes.relevance=false",
           f"--coordinator_address=localhost:{port}",
           "--num_processes=2", f"--process_id={i}"),
      cwd=ROOT, env=_env(xla_cache, 2), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  for i, p in enumerate(procs):
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, f"process {i}: {err[-3000:]}"
  # The cross-process all-reduce sums in another order than the in-process
  # one, so equality is to float rounding: 2e-5 absolute on params of scale
  # 2e-2 that each step moves by ~1e-3 (a batch that differs moves them by
  # that much). Near-zero-gradient params (attention key biases) make Adam
  # amplify rounding noise, hence no relative bound.
  one = checks.params(tmp_path / "one" / "models" / "4")
  two = checks.params(tmp_path / "two" / "stage1" / "models" / "4")
  untrained = checks.params(tmp_path / "one" / "models" / "0")
  for (path, a), b, a0 in zip(jax.tree_util.tree_flatten_with_path(one)[0],
                              jax.tree.leaves(two), jax.tree.leaves(untrained)):
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5, err_msg=str(path))
  moved = max(float(np.max(np.abs(a - a0))) for a, a0 in
              zip(jax.tree.leaves(one), jax.tree.leaves(untrained)))
  assert moved > 1e-3  # Training moved params far beyond the tolerance.
  losses = lambda run: [l["train/loss"] for l in map(json.loads, (
      tmp_path / run / "metrics.jsonl").read_text().splitlines())
                        if "train/loss" in l]
  np.testing.assert_allclose(losses("two/stage1"), losses("one"), rtol=1e-5)
  assert len(losses("one")) == 2
  # Both processes' data states were checkpointed (each resumes its shard).
  ckpt = tmp_path / "two" / "stage1" / "checkpoints" / "4" / "data" / "metadata"
  state = json.loads(ckpt.read_text())
  assert set(state["shards"]) == {"0", "1"}

  # The final evaluation of the two processes == one process's of the same
  # model: the same metrics, and an export of two parts (one per process)
  # holding the same embeddings as one process's single part.
  from dashclip_jax import index as index_lib  # pylint: disable=g-import-not-at-top
  from dashclip_jax.trainers import final_eval  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "stage2_config", ROOT / "configs" / "stage2.py")
  stage2_config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(stage2_config)
  config = stage2_config.get_config("tiny")
  config.final_eval.plots.enabled = False
  config.final_eval.gallery.enabled = False
  config.final_eval.probes.aisle = False
  config.final_eval.probes.relevance = False
  two_eval = tmp_path / "two" / "eval"
  got = json.loads((two_eval / "metrics.json").read_text())
  want = final_eval.run(config,
                        str(tmp_path / "two" / "stage2" / "models" / "2"),
                        str(tmp_path / "one_eval"),
                        str(tmp_path / "two" / "stage1" / "models" / "0"))
  assert set(got) == set(want) == {"dashclip", "init", "bm25"}
  for system, m in want.items():
    assert set(got[system]) == set(m), system
    for key, value in m.items():
      assert got[system][key] == pytest.approx(value, rel=1e-6, abs=1e-6), (
          system, key)
  assert sorted(f.name for f in (two_eval / "export").glob("*.parquet")) == [
      "products-00000-of-00002.parquet", "products-00001-of-00002.parquet",
      "queries.parquet"]
  ids, emb = index_lib.read_embeddings(str(two_eval / "export"))
  want_ids, want_emb = index_lib.read_embeddings(
      str(tmp_path / "one_eval" / "export"))
  assert ids == want_ids and len(ids) > 2
  np.testing.assert_allclose(emb, want_emb, rtol=0, atol=1e-6)
  assert index_lib.ExportedIndex(str(two_eval / "export")).index.ntotal == (
      len(ids))
