"""What the full tiny main job (stage 1, stage 2, evaluation) must leave in
its workdir; the README's set-up command runs that job in the docs test
(`test_docs_commands.py`), which checks it with `check_full_tiny_job`."""

import json
import pathlib

import jax
import numpy as np

from dashclip_jax.model import model_dir as model_dir_lib


def params(model_dir):
  _, trees, _ = model_dir_lib.load_model_dir(str(model_dir))
  return trees["params"]


def assert_trees_equal(a, b, what):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b], what
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=f"{what}: {path}")


def without_cross_attention(txt):
  return {k: ({n: v for n, v in layer.items()
               if n not in ("cross_attn", "cross_attn_norm")}
              if isinstance(layer, dict) else layer)
          for k, layer in txt.items()}


def check_full_tiny_job(workdir: pathlib.Path, stdout: str) -> None:
  """`python -m dashclip_jax.main --config=configs/stage2.py:tiny
  --workdir=<workdir>` ran stage 1, then stage 2 from it, then the
  evaluation; `stdout` is what it printed."""
  s1 = params(workdir / "stage1" / "models" / "6")
  s2 = params(workdir / "stage2" / "models" / "6")
  untrained = params(workdir / "stage1" / "models" / "0")
  # Stage 1 trained the product tower and left the unused query tower.
  assert not np.array_equal(s1["img"]["patch_embed"]["kernel"],
                            untrained["img"]["patch_embed"]["kernel"])
  assert_trees_equal(s1["query"], untrained["query"], "stage-1 query tower")
  # Stage 2 loaded stage 1's model and kept its product tower frozen ...
  for tower in ("img", "txt", "vision_proj", "text_proj", "itm_head"):
    assert_trees_equal(s2[tower], s1[tower], f"stage-2 {tower}")
  # ... but trained the projection that makes the product embedding ...
  assert not np.array_equal(s2["product_proj"]["kernel"],
                            s1["product_proj"]["kernel"])
  # ... and trained the query tower it copied from stage 1's text encoder.
  q_start = without_cross_attention(s1["txt"])
  assert jax.tree.structure(s2["query"]) == jax.tree.structure(q_start)
  moved = [not np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(s2["query"]), jax.tree.leaves(q_start))]
  assert any(moved)
  # The evaluation ran on the trained model against the untrained one.
  metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
  assert {"dashclip", "init", "bm25"} <= set(metrics)
  assert "ndcg@10" in metrics["dashclip"] and "system" in stdout
  assert (workdir / "eval" / "report.md").is_file()
  resolved = json.loads((workdir / "config.json").read_text())
  assert resolved["stage"] == "stage2"
  # Metrics: JSON lines at the log steps (log_every=2) and TensorBoard.
  lines = [json.loads(l) for l in (workdir / "stage2" / "metrics.jsonl")
           .read_text().splitlines()]
  logged = [l for l in lines if "train/loss" in l]
  assert [l["step"] for l in logged] == [2, 4, 6]
  for key in ("train/qcc_loss", "train/temp", "train/lr", "train/grad_norm",
              "train/examples_per_s", "train/step_time_s"):
    assert np.isfinite(logged[-1][key]), key
  evals = [l for l in lines if "eval/ndcg@10" in l]
  assert evals and all("eval/recall@1" in l and "eval/r@1" not in l
                       for l in evals)
  # Stage 1's in-loop figure is hit@1 (a matching product id ranked first);
  # the loop checks each stage's checkpoint.best_metric is one it logs.
  s1_lines = [json.loads(l) for l in (workdir / "stage1" / "metrics.jsonl")
              .read_text().splitlines()]
  assert any("eval/hit@1" in l for l in s1_lines)
  assert not any("eval/r@1" in l for l in s1_lines)
  assert any(f.name.startswith("events.out.tfevents") for f in
             (workdir / "stage2" / "tensorboard").iterdir())
