"""The generate step: template writer, filters, test-query check, kill -9
and rerun, and the generated queries through mine and label."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from dashclip_jax.curation import pipeline
from dashclip_jax.curation import query_writers as qw
from dashclip_jax.curation.steps import context as context_lib
from dashclip_jax.curation.steps import generate
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.runtime import config_files


def _config(**overrides):
  return config_files.load_config("configs/curate.py", "tiny", {
      "label.progress": False, "generate.progress": False,
      "generate.writer": "template", **overrides})


def test_template_drafts_fill_the_slots_of_a_product():
  ctx = context_lib.context(_config(), "/nonexistent")
  cat = ctx.catalog
  i = next(j for j, t in enumerate(cat.titles) if t.startswith("Alder Men"))
  brands = qw.catalog_brands(cat)
  slots = qw.product_slots(cat, i, brands)
  assert slots["gender"] == "men" and slots["for_gender"] == "for men"
  assert slots["brand"] == "alder" and slots["colour"] in cat.titles[i].lower()
  # Without synonyms every draft is a template filled with these slots.
  drafts = qw.template_drafts(cat, i, 3, seed=0, brands=brands,
                              synonym_rate=0.0)
  filled = {t.format(**slots) for t in qw.TEMPLATES
            if "{usage}" not in t}
  assert len(set(drafts)) == 3 and set(drafts) <= filled


def test_brands_are_the_title_starts_many_products_share():
  titles = ["United Colors of Benetton Men Blue Shirt",
            "United Colors of Benetton Women Red Top",
            "United Colors of Benetton Teal Top",  # Ends at its colour.
            "Puma Men Black Tee", "Puma Deccan Chargers Men Tee",
            "Puma Women Grey Shoes", "Newhide Vintage Wallet",
            "French Connection Men Shirt"]
  colours = ["Blue", "Red", "Teal", "Black", "Black", "Grey", "Brown", "White"]
  cat = catalog_lib.Catalog(
      name="hand", ids=[str(i) for i in range(8)], titles=titles,
      category=np.zeros(8, np.int32), category_names=["x"], split=["train"] * 8,
      images=[b""] * 8, where=[""] * 8, attributes={"baseColour": colours})
  assert qw.catalog_brands(cat) == (
      ["united colors of benetton"] * 3 + ["puma"] * 3 + ["newhide", "french"])
  # One title is not enough to make a two-word brand; at min_products=2,
  # two are.
  assert qw.catalog_brands(cat, min_products=2)[-1] == "french"
  two = dataclasses.replace(cat, titles=titles[:6] + [
      "French Connection Women Top", "French Connection Men Shirt"])
  assert qw.catalog_brands(two, min_products=2)[-2:] == ["french connection"] * 2
  assert qw.catalog_brands(two)[-1] == "french"


def test_templates_that_repeat_a_word_are_not_used():
  cat = catalog_lib.Catalog(
      name="hand", ids=["0", "1"], titles=["Puma Men Black Shoes"] * 2,
      category=np.zeros(2, np.int32), category_names=["Casual Shoes"],
      split=["train"] * 2, images=[b""] * 2, where=[""] * 2,
      attributes={"baseColour": ["Black"] * 2, "gender": ["Men"] * 2,
                  "usage": ["Casual", "Sports"]})
  brands = ["puma"] * 2
  casual, sports = (set(qw.template_drafts(cat, i, len(qw.TEMPLATES), 0,
                                           brands, synonym_rate=0.0))
                    for i in (0, 1))
  assert "sports casual shoes" in sports and len(sports) == len(qw.TEMPLATES)
  assert not any("casual casual" in d for d in casual)
  assert len(casual) == len(qw.TEMPLATES) - 2  # The two {usage} templates.


def test_filters_test_queries_and_duplicates_are_counted():
  test = qw.TestQueries(["Men Black Watches", "red kurta"])
  drafts = [["Query: navy shirt.", "navy shirt", "watches black men",
             "men black watches", "\u65e5\u672c\u8a9e \u30b7\u30e3\u30c4",
             "shirt", "", "a b c d e f g h i"],
            ["\"Shirts navy\"", "red kurtas", "blue jeans for him"]]
  seen = {qw.token_key("blue jeans for him")}  # A known query.
  table, counts = generate.judge(drafts, ["p1", "p2"], "template", test,
                                 qw.Filters(), seen)
  assert table["query"].to_pylist() == ["navy shirt"]
  assert table["query_id"].to_pylist() == ["gen-template-p1-0"]
  assert counts == {
      "generated": 11, "kept": 1, "dropped_test_exact": 1,
      "dropped_test_near": 2,  # Reordered; a plural.
      "dropped_duplicate": 3,  # Same text, reordered, a known query.
      "dropped_empty": 1, "dropped_words": 2, "dropped_chars": 0,
      "dropped_language": 1}


SCRIPT = r"""
import os, signal, sys
from dashclip_jax.curation.steps import context as context_lib
from dashclip_jax.curation.steps import generate
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.runtime import config_files

def run(workdir, kill_at, seed="0"):
  config = config_files.load_config("configs/curate.py", "tiny", {
      "generate.progress": False, "generate.writer": "template",
      "seed": int(seed)})
  def kill(shard, tmp):
    if shard == int(kill_at):
      os.kill(os.getpid(), signal.SIGKILL)
  return generate.generate_queries(context_lib.context(config, workdir),
                                   before_commit=kill)
"""


def _subprocess(*args):
  return subprocess.run(
      [sys.executable, "-c", SCRIPT + "\nimport logging\nlogging.basicConfig("
       "level=logging.INFO, force=True)\nrun(*sys.argv[1:])",
       *map(str, args)], capture_output=True, text=True, timeout=600,
      cwd=os.getcwd())


def _rows(directory):
  return pq.read_table(sorted(str(p) for p in directory.glob("part-*")))


def _files(directory):
  return {n: open(os.path.join(directory, n), "rb").read()
          for n in sorted(os.listdir(directory))}


def test_generate_is_deterministic_and_resumes_after_kill(tmp_path):
  namespace = {}
  exec(SCRIPT, namespace)  # pylint: disable=exec-used
  whole = namespace["run"](str(tmp_path / "whole"), -1)
  assert whole["shards"] == 5 and whole["kept"] > 50

  killed = _subprocess(tmp_path / "resumed", 2)
  assert killed.returncode == -9, killed.stderr[-2000:]
  out = tmp_path / "resumed" / "generated"
  left = sorted(os.listdir(out))
  assert [n for n in left if n.endswith(".parquet")] == [
      "part-00000-of-00005.parquet", "part-00001-of-00005.parquet"]
  assert any(".parquet.tmp" in n for n in left)  # Shard 2, never renamed.
  before = {n: os.stat(out / n) for n in left if n.endswith(".parquet")}

  rerun = _subprocess(tmp_path / "resumed", -1)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert "2 of 5 shards already written, skipped" in rerun.stderr
  for name, st in before.items():  # Not written again.
    now = os.stat(out / name)
    assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
  assert _files(out) == _files(tmp_path / "whole" / "generated")
  rows = _rows(out)
  keys = [qw.token_key(q) for q in rows["query"].to_pylist()]
  assert len(set(rows["query_id"].to_pylist())) == len(rows)
  assert len(set(keys)) == len(keys)  # No query twice, nor reordered.

  other = namespace["run"](str(tmp_path / "seed1"), -1, "1")
  assert other["examples"] != whole["examples"]  # The seed matters.


def test_test_query_duplicates_are_dropped_in_the_step(tmp_path,
                                                       monkeypatch):
  config = _config()
  first = generate.generate_queries(
      context_lib.context(config, str(tmp_path / "a")))
  rows = _rows(tmp_path / "a" / "generated")
  exact, near = rows["query"][0].as_py(), rows["query"][5].as_py()
  # Reordered words: a near duplicate.
  test = qw.TestQueries([exact, " ".join(reversed(near.split()))])
  monkeypatch.setattr(generate, "test_queries", lambda ctx: test)
  again = generate.generate_queries(
      context_lib.context(config, str(tmp_path / "b")))
  kept = _rows(tmp_path / "b" / "generated")["query"]
  assert exact not in kept.to_pylist() and near not in kept.to_pylist()
  assert again["dropped_test_exact"] >= 1 and again["dropped_test_near"] >= 1
  # Those two were kept once each; their repeats, duplicates before, are
  # now test duplicates too; nothing else changes.
  assert again["kept"] == first["kept"] - 2
  assert again["dropped_test"] - first["dropped_test"] == 2 + (
      first["dropped_duplicate"] - again["dropped_duplicate"])


def test_generated_queries_go_through_mine_label_and_expand(tmp_path):
  config = _config(run="teacher,generate,mine,label,expand,report",
                   **{"label.threshold": 0.0})  # Keep every label.
  out = pipeline.run(config, str(tmp_path))
  gen = _rows(tmp_path / "generated")
  ids = set(gen["query_id"].to_pylist())
  cand = pq.read_table(tmp_path / "candidates.parquet")
  mined = set(cand["query_id"].to_pylist())
  assert ids <= mined  # Every generated query got candidates.
  expanded = pq.read_table(tmp_path / "expanded" / "rows.parquet")
  teacher_rows = expanded.filter(
      np.isin(np.asarray(expanded["query_id"].to_pylist()), sorted(ids)))
  assert set(teacher_rows["label_source"].to_pylist()) == {"teacher"}
  assert set(teacher_rows["query_id"].to_pylist()) == ids
  assert out["generate"]["kept"] == len(ids)
  ctx = context_lib.context(config, str(tmp_path))
  generate.add_generated(ctx)
  verdict = generate.kept_by_teacher(ctx)
  assert verdict["queries"] == len(ids)
  assert verdict["pairs"] == int(np.isin(
      np.asarray(cand["query_id"].to_pylist()), sorted(ids)).sum())
  assert verdict["pairs_kept_share"] == 1.0  # Threshold 0.
  # The report carries the counts, the teacher's verdict and the examples.
  assert out["report"]["metrics"]["generated"]["teacher"] == verdict
  report = (tmp_path / "report" / "report.md").read_text()
  section = report[report.index("## Generated queries"):]
  assert f"{out['generate']['kept']} kept" in section
  assert f"kept {verdict['pairs_kept']} (100.0%)" in section
  assert section.count("\n* ") == min(len(ids), generate.NUM_EXAMPLES)
  # A later run without the generate step mines them again (same table).
  with config.unlocked():
    config.run = "mine"
  pipeline.run(config, str(tmp_path))
  assert pq.read_table(tmp_path / "candidates.parquet").equals(cand)


def test_generate_needs_its_output_when_a_writer_is_set(tmp_path):
  config = _config(run="mine")
  with pytest.raises(FileNotFoundError, match="run the generate step"):
    pipeline.run(config, str(tmp_path))
