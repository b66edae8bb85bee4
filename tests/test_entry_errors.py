"""Config, flag, data and path errors end in one line at every entry point.

`python -m dashclip_jax.main | dashclip_jax.evaluation.run |
dashclip_jax.evaluation.search` print `<prog>: error: <message>` and exit
non-zero, never a traceback (convert: tests/test_convert_errors.py).

The subprocess cases run each shipped config file through its entry point
with a typo and with a missing required value; every one stops before any
compilation. The rest call the same pieces in-process: that the error is
raised, names its culprit, and is of a type the entry point prints as one
line.
"""

import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from dashclip_jax import app
from dashclip_jax.runtime import config_files
from dashclip_jax.runtime import flag_errors

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGE1_TINY = "--config=configs/stage1.py:tiny"
STAGE2_TINY = "--config=configs/stage2.py:tiny"
MAIN = "dashclip_jax.main"
EVAL = "dashclip_jax.evaluation.run"
SEARCH = "dashclip_jax.evaluation.search"

# (entry module, its prog name, arguments, what the one line must name).
# {tmp} is the test's tmp_path.
CLI_CASES = {
    # stage1.py: a missing required value (its typo: test_main.py).
    "stage1_no_data_path": (
        MAIN, MAIN, ["--workdir={tmp}/w", STAGE1_TINY,
                     "--config.data.source=fashion",
                     "--config.data.path={tmp}/no_such_dir"],
        ["data.path", "no_such_dir"]),
    # stage2.py: a typo in its nested eval block, and a stage-1 override
    # that would be ignored (stage 1 runs on stage 2's model).
    "stage2_typo": (
        MAIN, MAIN, ["--workdir={tmp}/w", STAGE2_TINY,
                     "--config.final_eval.knn.deph=5"],
        ["--config.final_eval.knn.deph", 'Did you mean "depth"']),
    "stage2_stage1_model_override": (
        MAIN, MAIN, ["--workdir={tmp}/w", STAGE2_TINY,
                     "--config.stage1.model.size=small"],
        ["--config.stage1.model.size", "set --config.model.size instead"]),
    "workdir_not_writable": (
        MAIN, MAIN, ["--workdir={tmp}/a_file/w", STAGE1_TINY],
        ["--workdir=", "a_file/w", "not a writable directory"]),
    # eval.py (through the main entry: test_main_runs_an_eval_config).
    "eval_typo": (
        EVAL, "evaluation.run",
        ["--workdir={tmp}/w", "--config=configs/eval.py:synthetic",
         "--config.knn.deph=5"],
        ["--config.knn.deph", 'Did you mean "depth"']),
    "eval_no_checkpoint": (
        EVAL, "evaluation.run",
        ["--workdir={tmp}/w", "--config=configs/eval.py:fashion"],
        ["config.checkpoint is empty"]),
    "search_no_export": (
        SEARCH, "search", ["--export_dir={tmp}/no_export", "--query=shirt"],
        ["--export_dir=", "no_export"]),
    "search_negative_k": (
        SEARCH, "search", ["--export_dir={tmp}", "--query=shirt", "--k=-1"],
        ["--k=-1"]),
}


def _last_line(text):
  lines = [l for l in text.strip().splitlines() if l.strip()]
  return lines[-1] if lines else ""


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_error_is_one_line(case, tmp_path):
  module, prog, args, culprits = CLI_CASES[case]
  (tmp_path / "a_file").write_text("")
  out = subprocess.run(
      [sys.executable, "-m", module,
       *(a.format(tmp=tmp_path) for a in args)],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu"))
  assert out.returncode != 0, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  last = _last_line(out.stderr)
  assert last.startswith(f"{prog}: error: "), out.stderr[-3000:]
  for culprit in culprits:
    assert culprit in last, last
  assert not (tmp_path / "w" / "checkpoints").exists()


# ---------------------------------------------------------------------------
# The pieces, in-process.


def test_one_line_errors_prints_listed_errors_and_keeps_the_rest():
  with pytest.raises(SystemExit) as e:
    with app.one_line_errors("prog", (KeyError, ValueError)):
      raise ValueError("bad value\n  for 'x'")
  assert e.value.code == "prog: error: bad value for 'x'"
  with pytest.raises(SystemExit) as e:
    with app.one_line_errors("prog", (KeyError,)):
      raise KeyError("missing key")
  assert e.value.code == "prog: error: missing key"
  with pytest.raises(TypeError):  # Not listed: a bug keeps its traceback.
    with app.one_line_errors("prog", (ValueError,)):
      raise TypeError("x")


def test_config_error_messages_name_the_override():
  try:
    raise AttributeError(KeyError(
        "'batch_sise'\nDid you mean \"batch_size\" instead of \"batch_sise\"?"
    )) from KeyError("batch_sise")
  except AttributeError as e:
    text = flag_errors.flag_error(e, ["prog", "--config.train.batch_sise=4"])
  assert text.startswith("--config.train.batch_sise: no such config key")
  assert 'Did you mean "batch_size"' in text and "\n" not in text


def test_check_workdir(tmp_path):
  app.check_workdir(str(tmp_path / "new" / "dir"))
  assert (tmp_path / "new" / "dir").is_dir()
  (tmp_path / "file").write_text("")
  with pytest.raises(config_files.ConfigError,
                     match=r"--workdir=.*file/w is not a writable directory"):
    app.check_workdir(str(tmp_path / "file" / "w"))


def _config(name, variant="tiny"):
  """configs/<name>.py:<variant>, as the entry points load it."""
  return config_files.load_config(ROOT / "configs" / f"{name}.py", variant)


def test_stage2_config_stage1_block_takes_data_model_mesh_seed_from_stage2():
  from dashclip_jax import main  # pylint: disable=g-import-not-at-top
  config = _config("stage2")
  # No ignored copies: `--config.stage1.model.*` cannot be set at all ...
  for key in ("data", "model", "mesh", "seed"):
    assert key not in config.stage1, key
  # ... and `--config.model.*` moves both stages.
  config.model.remat = True
  config.seed = 7
  s1 = main.stage1_config_of(config)
  assert s1.model.remat and s1.seed == 7 and s1.stage == "stage1"
  assert s1.data.to_dict() == config.data.to_dict()
  # A config file whose stage1 block sets its own model is told what to do.
  config.stage1.model = config.model.copy_and_resolve_references()
  with pytest.raises(config_files.ConfigError,
                     match=r"config.stage1.model: .*set config.model instead"):
    main.stage1_config_of(config)
  # The CLI hint also covers a stage-2 config without a stage1 block.
  assert "set --config.seed instead" in config_files.stage1_override_error(
      ["prog", "--config=configs/stage2.py:base", "--config.stage1.seed=1"])
  assert config_files.stage1_override_error(
      ["prog", "--config.stage1.optim.lr=1"]) is None


@pytest.fixture
def restore_sigterm():
  # The trainers install a SIGTERM handler (pre-emption); keep pytest's.
  handler = signal.getsignal(signal.SIGTERM)
  yield
  signal.signal(signal.SIGTERM, handler)


def test_main_data_errors_are_one_line_errors(tmp_path, restore_sigterm):
  from dashclip_jax import main  # pylint: disable=g-import-not-at-top
  errors = main.one_line_errors()
  config = _config("stage1")
  config.data.source = "parquet"
  with pytest.raises(errors, match=r"data.source 'parquet' not in"):
    main.run(config, str(tmp_path / "unknown_source"))
  # A catalog above max_bad_fraction (no image exists) stops with the
  # BadDataError's summary.
  root = tmp_path / "fashion"
  root.mkdir()
  (root / "styles.csv").write_text(
      "id,gender,masterCategory,subCategory,articleType,baseColour,season,"
      "year,usage,productDisplayName,split\n" + "".join(
          f"{i},Men,Apparel,Topwear,Tshirts,Blue,Fall,2010,Casual,Shirt {i},"
          "train\n" for i in range(1, 9)))
  config.data.source, config.data.path = "fashion", str(root)
  with pytest.raises(errors, match=r"styles.csv.*max_bad_fraction|"
                     r"styles.csv: no usable products"):
    main.run(config, str(tmp_path / "bad_data"))
  config.data.path = str(tmp_path / "no_such_dir")
  with pytest.raises(errors, match="no_such_dir"):
    main.run(config, str(tmp_path / "no_path"))
  config = _config("stage1")
  config.stage = "stage3"
  with pytest.raises(errors, match="config.stage must be stage1, stage2 or "
                     "eval"):
    main.run(config, str(tmp_path / "bad_stage"))


def test_main_runs_an_eval_config(tmp_path, monkeypatch):
  from dashclip_jax import main  # pylint: disable=g-import-not-at-top
  from dashclip_jax.evaluation import pipeline as eval_pipeline  # pylint: disable=g-import-not-at-top
  cfg = _config("eval", "synthetic")
  # Without a checkpoint: evaluation.run's own one-line error.
  with pytest.raises(main.one_line_errors(),
                     match="config.checkpoint is empty: set --config"):
    main.run(cfg, str(tmp_path / "no_checkpoint"))
  calls = []
  monkeypatch.setattr(eval_pipeline, "evaluate",
                      lambda c, w: calls.append((c, w))
                      or {"dashclip": {"ndcg@10": 0.5}})
  out = main.run(cfg, str(tmp_path / "eval"))
  assert calls == [(cfg, str(tmp_path / "eval"))]
  assert out == {"metrics": {"dashclip": {"ndcg@10": 0.5}}}
  assert "0.5000" in main.summary_table(out["metrics"])


class _Model:
  """Deterministic title embeddings (no checkpoint)."""

  def encode_query(self, texts):
    return np.stack([np.frombuffer(t.ljust(8)[:8].encode(), np.uint8)
                     .astype(np.float32) + 1 for t in texts])

  def encode_product(self, images, titles):
    del images
    return self.encode_query(titles)


def test_eval_errors_are_one_line_errors(tmp_path):
  from dashclip_jax.evaluation import pipeline as eval_pipeline  # pylint: disable=g-import-not-at-top
  from dashclip_jax.evaluation import run as run_lib  # pylint: disable=g-import-not-at-top
  errors = run_lib.one_line_errors()
  cfg = _config("eval", "fashion")
  cfg.data.path = str(tmp_path / "no_catalog")
  models = {"dashclip": _Model()}
  with pytest.raises(errors, match=r"data.path .*no_catalog.* is not a "
                     "directory"):
    eval_pipeline.evaluate(cfg, str(tmp_path / "out"), models=models)
  cfg.baselines = ("bm52",)
  with pytest.raises(errors, match=r"config.baselines: unknown \['bm52'\]"):
    eval_pipeline.evaluate(cfg, str(tmp_path / "out"), models=models)
  cfg.baselines = ("init",)
  with pytest.raises(errors, match="has 'init' but config.init_checkpoint"):
    eval_pipeline.evaluate(cfg, str(tmp_path / "out"), models=models)
  # Model paths are checked before any data is read.
  cfg.init_checkpoint = str(tmp_path / "no_init")
  with pytest.raises(errors, match=r"config.init_checkpoint: .*no_init"):
    eval_pipeline.evaluate(cfg, str(tmp_path / "out"), models=models)
  cfg.baselines = ()
  cfg.checkpoint = str(tmp_path / "no_model")
  with pytest.raises(errors, match=r"config.checkpoint: .*no_model"):
    eval_pipeline.evaluate(cfg, str(tmp_path / "out"))


def test_search_rejects_missing_and_truncated_exports(tmp_path):
  from dashclip_jax import index as index_lib  # pylint: disable=g-import-not-at-top
  from dashclip_jax.evaluation import search  # pylint: disable=g-import-not-at-top
  emb = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
  good = index_lib.export_embeddings(
      str(tmp_path / "good"), [f"p{i}" for i in range(20)],
      [f"title {i}" for i in range(20)], emb, index_kind="flat")
  assert len(search.load_index(good).ids) == 20
  with pytest.raises(config_files.ConfigError, match="no_dir: no such dir"):
    search.load_index(str(tmp_path / "no_dir"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(config_files.ConfigError, match="manifest.json missing"):
    search.load_index(str(tmp_path / "empty"))
  for suffix in (".faiss", ".parquet"):  # The index, the product table.
    bad = tmp_path / f"truncated{suffix}"
    bad.mkdir()
    for f in os.listdir(good):
      data = (pathlib.Path(good) / f).read_bytes()
      cut = f.endswith(suffix) and not f.startswith("queries")
      (bad / f).write_bytes(data[:len(data) // 2] if cut else data)
    with pytest.raises(config_files.ConfigError) as e:
      search.load_index(str(bad))
    text = str(e.value)
    assert text.startswith(f"--export_dir={bad}: unreadable export"), text
    assert "\n" not in text and "index_read.cpp" not in text, text


@pytest.mark.parametrize("key,value,names", [
    ("train.batch_size", 7, "global batch 7 is not divisible"),
    ("data.num_shards", 3, "data.num_shards=3"),
    ("model.size", "huge", "model.size: Unknown model size 'huge'"),
    ("train.nan_policy", "ignore", "train.nan_policy='ignore'"),
])
def test_main_config_value_errors_are_one_line_errors(tmp_path, key, value,
                                                      names, restore_sigterm):
  """Values a config file accepts but the trainer cannot use: each raised
  before the first step compiles, as an error `main` prints in one line."""
  from dashclip_jax import main  # pylint: disable=g-import-not-at-top
  config = _config("stage1")
  block, field = key.split(".")
  config[block][field] = value
  with pytest.raises(main.one_line_errors(), match=names):
    main.run(config, str(tmp_path / "w"))


def test_table_without_a_mapped_column_is_one_line(tmp_path):
  """A catalog lacking a column the mapping needs: one line naming the file
  and the column (require_columns raised a ValueError: a traceback)."""
  table = tmp_path / "catalog.csv"
  table.write_text("id,name,image\n1,Blue shirt,1.jpg\n")
  out = subprocess.run(
      [sys.executable, "-m", MAIN, f"--workdir={tmp_path}/w", STAGE2_TINY,
       "--config.data.source=table", f"--config.data.catalog_path={table}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu"))
  assert out.returncode != 0, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  last = _last_line(out.stderr)
  assert last.startswith(f"{MAIN}: error: "), out.stderr[-3000:]
  assert str(table) in last and "['title'] not found" in last, last


def test_a_utf8_bom_table_loads_through_the_jobs_loader(tmp_path):
  """Spreadsheets' "CSV UTF-8" starts with a BOM: the first column is still
  `id` (it read as '\\ufeffid': columns ['id'] not found)."""
  from dashclip_jax.data import sources  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for i in (1, 2):
    Image.new("RGB", (4, 4)).save(tmp_path / f"{i}.jpg")
  table = tmp_path / "catalog.csv"
  table.write_bytes("\ufeffid,title,image,split\n1,Blue shirt,1.jpg,train\n"
                    "2,Red dress,2.jpg,test\n".encode("utf-8"))
  got = sources.load_sources(dict(source="table", catalog_path=str(table),
                                  max_bad_fraction=0.0))
  assert got.catalog.ids == ["1", "2"]
  assert got.train_catalog.titles == ["Blue shirt"]


@pytest.mark.parametrize("module,config", [
    ("dashclip_jax.main", "configs/stage2.py:tiny"),
    ("dashclip_jax.curation.main", "configs/curate.py:tiny"),
    ("dashclip_jax.ranking.main", "configs/ranking.py:tiny"),
    ("dashclip_jax.ranking.export_baseline", "configs/ranking.py:tiny"),
    ("dashclip_jax.evaluation.run", "configs/eval.py:synthetic"),
])
def test_a_bad_override_fails_before_jax_is_imported(module, config,
                                                      tmp_path):
  # A jax that cannot be imported: the error line must come first.
  (tmp_path / "jax").mkdir()
  (tmp_path / "jax" / "__init__.py").write_text(
      "raise ImportError('jax was imported')\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]))
  out = subprocess.run(
      [sys.executable, "-m", module, f"--config={config}",
       "--config.trian.steps=1", f"--workdir={tmp_path}/w"],
      cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
      env=env)
  prog = module.replace("dashclip_jax.evaluation.", "evaluation.")
  # One line; "Did you mean" where the config has a near key (stage 2's
  # and ranking's `train`).
  assert out.stderr.strip().split(" Did you mean")[0] == (
      f"{prog}: error: --config.trian.steps: no such config key 'trian'."
      ), out.stderr[-2000:]
  assert "\n" not in out.stderr.strip()
  assert not (tmp_path / "w").exists()
