"""Stage 2's periodic evaluation with eval.paraphrases: the rule- and
hand-written paraphrases over train products are scored beside the
held-out queries (para/* next to eval/*), on the real fashion catalog."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FASHION = ROOT.parent / "shared" / "data" / "fashion"


@pytest.mark.skipif(not (FASHION / "styles.csv").is_file(),
                    reason="needs ../shared/data/fashion")
def test_stage2_reports_the_paraphrase_set_beside_the_heldout_queries(
    tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "dashclip_jax.main",
       "--config=configs/stage2.py:tiny", f"--workdir={tmp_path}",
       "--config.data.source=fashion", f"--config.data.path={FASHION}",
       "--config.data.heldout_eval_queries=64",
       "--config.eval.paraphrases=True", "--config.train.total_steps=1",
       "--config.train.eval_every=1", "--config.stage1.train.total_steps=1",
       "--config.final_eval.enabled=False"],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
      env=dict(os.environ, HF_HUB_OFFLINE="1"))
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in
          (tmp_path / "stage2" / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if "eval/ndcg@10" in r]
  assert evals and all("para/ndcg@10" in r for r in evals)
  first = evals[0]
  # 79 hand-written + the rule-written queries, each with a label 2.
  assert first["para/queries_ranked"] > 79
  assert 0.0 <= first["para/ndcg@10"] <= 1.0
  assert first["eval/queries_ranked"] <= 64
