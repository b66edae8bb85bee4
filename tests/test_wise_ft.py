"""WiSE-FT: mixing the query side of two param trees, choosing alpha."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from dashclip_jax.model import model_dir
from dashclip_jax.trainers import init_checkpoint
from dashclip_jax.trainers import wise_ft


def _trees():
  rng = np.random.default_rng(0)
  tree = lambda: {
      "query": {"layer_0": {"kernel": rng.normal(size=(3, 4)).astype(
          np.float32)}, "emb": rng.normal(size=(5,)).astype(np.float32)},
      "query_proj": {"kernel": rng.normal(size=(4, 2)).astype(np.float32)},
      "txt": {"kernel": rng.normal(size=(2, 2)).astype(np.float32)},
      "temp": np.float32(rng.normal())}
  return tree(), tree()


def _leaves(tree, key):
  return [np.asarray(x) for x in jax.tree.leaves(tree[key])]


def test_endpoints_are_exact_and_half_is_the_mean():
  trained, initial = _trees()
  for alpha, want in ((1.0, trained), (0.0, initial)):
    mixed = wise_ft.mix(trained, initial, alpha)
    for key in wise_ft.QUERY_SIDE:
      for a, b in zip(_leaves(mixed, key), _leaves(want, key)):
        np.testing.assert_array_equal(a, b)
  half = wise_ft.mix(trained, initial, 0.5)
  for key in wise_ft.QUERY_SIDE:
    for m, t, i in zip(_leaves(half, key), _leaves(trained, key),
                       _leaves(initial, key)):
      np.testing.assert_allclose(m, (t + i) / 2, rtol=1e-6)
  # The product side and temp are always the trained model's.
  for alpha in (0.0, 0.5):
    mixed = wise_ft.mix(trained, initial, alpha)
    assert mixed["txt"] is trained["txt"] and mixed["temp"] is trained["temp"]


def test_bad_inputs_raise():
  trained, initial = _trees()
  with pytest.raises(ValueError, match="alpha"):
    wise_ft.mix(trained, initial, 1.5)
  with pytest.raises(ValueError, match="missing"):
    wise_ft.mix(trained, {k: v for k, v in initial.items()
                          if k != "query_proj"}, 0.5)
  initial["query_proj"]["kernel"] = np.zeros((2, 4), np.float32)
  with pytest.raises(ValueError, match="leaf"):
    wise_ft.mix(trained, initial, 0.5)


def test_choose_alpha_picks_the_best_score_and_ties_go_to_trained():
  trained, initial = _trees()
  target = wise_ft.mix(trained, initial, 0.3)["query_proj"]["kernel"]
  # Score: closeness of query_proj to the alpha=0.3 mix.
  score = lambda p: -float(np.abs(np.asarray(p["query_proj"]["kernel"]) -
                                  np.asarray(target)).sum())
  best, scores = wise_ft.choose_alpha(trained, initial, score)
  assert best == 0.3 and len(scores) == 11
  best, _ = wise_ft.choose_alpha(trained, initial, lambda p: 1.0,
                                 alphas=(0.0, 0.5, 1.0))
  assert best == 1.0
  best, _ = wise_ft.choose_alpha(
      trained, initial,
      lambda p: float("nan") if np.array_equal(
          p["query_proj"]["kernel"], trained["query_proj"]["kernel"]) else 0.0,
      alphas=(0.0, 1.0))
  assert best == 0.0


def test_stage2_wise_ft_at_alpha_0_exports_the_start(tmp_path):
  """A tiny main job with wise_ft.alphas=(0.0,), mix="all": the exported
  stage-2 model is its start (stage 1's model, text copied to the query
  tower) leaf for leaf, and the alpha's held-out metrics are the ones
  logged before stage 2's first step."""
  root = pathlib.Path(__file__).resolve().parents[1]
  out = subprocess.run(
      [sys.executable, "-m", "dashclip_jax.main",
       "--config=configs/stage2.py:tiny", f"--workdir={tmp_path}",
       "--config.stage1.train.total_steps=1", "--config.train.total_steps=2",
       "--config.train.eval_every=2", "--config.final_eval.enabled=False",
       "--config.wise_ft.alphas=(0.0,)", "--config.wise_ft.mix=all"],
      cwd=root, capture_output=True, text=True, timeout=900,
      env=dict(os.environ, HF_HUB_OFFLINE="1"))
  assert out.returncode == 0, out.stderr[-3000:]
  stage1 = tmp_path / "stage1" / "models" / "1"
  stage2 = tmp_path / "stage2" / "models" / "2"
  config, start, _ = model_dir.load_model_dir(str(stage1))
  start = init_checkpoint.copy_text_to_query(start["params"], config)
  _, exported, _ = model_dir.load_model_dir(str(stage2))
  flat = lambda t: jax.tree_util.tree_flatten_with_path(t)[0]
  got, want = flat(exported["params"]), flat(start)
  assert [p for p, _ in got] == [p for p, _ in want]
  for (path, g), (_, w) in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), str(path))
  result = json.loads((tmp_path / "stage2" / wise_ft.RESULT_FILE).read_text())
  assert result["alpha"] == 0.0
  rows = [json.loads(line) for line in
          (tmp_path / "stage2" / "metrics.jsonl").read_text().splitlines()]
  before = next(r for r in rows if r.get("step") == 0 and "eval/ndcg@10" in r)
  assert result["metrics"]["0.0"]["eval/ndcg@10"] == pytest.approx(
      before["eval/ndcg@10"], abs=1e-6)


def test_stage2_wise_ft_config_is_checked_before_training():
  cfg = ml_collections.ConfigDict(dict(alphas=(0.5, 1.0), mix="query",
                                       select=("eval/ndcg@10",)))
  wise_ft.check_config(cfg, paraphrases=False, has_start=True)
  with pytest.raises(ValueError, match="needs a start"):
    wise_ft.check_config(cfg, paraphrases=False, has_start=False)
  bad = [("alphas", (0.5, 1.5), r"\[0, 1\]"), ("mix", "both", "'query'"),
         ("select", ("train/loss",), "not a stage-2"),
         ("select", ("para/ndcg@10",), "eval.paraphrases=True")]
  for key, value, message in bad:
    broken = ml_collections.ConfigDict(cfg.to_dict())
    broken[key] = value
    with pytest.raises(ValueError, match=message):
      wise_ft.check_config(broken, paraphrases=False, has_start=True)
  cfg.select = ("eval/ndcg@10", "para/ndcg@10")
  wise_ft.check_config(cfg, paraphrases=True, has_start=True)
