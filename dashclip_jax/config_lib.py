"""Helpers for configs/*.py (`:variant,key=value` arguments, shared blocks)
and for the entry points: one-line errors (`ConfigError`, `one_line_errors`,
`flags_parser`) and start-up (`start_logging`, `job_config`,
`init_distributed`).
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import sys
import tempfile
from typing import Iterator, Sequence

from absl import flags
import ml_collections


class ConfigError(ValueError):
  """A config value, flag or path an entry point cannot use.

  The message names the culprit and what to set instead; the entry points
  print it as one line, `<prog>: error: <message>`, with no traceback.
  """


# What the nested `stage1` block of a stage-2 config takes from the stage-2
# config itself (main.stage1_config_of): one override moves both stages.
STAGE1_FROM_STAGE2 = ("data", "model", "mesh", "seed")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "tiny,batch=16" into typed fields over `defaults`.

  A bare word sets `variant` (when `variant` is a default); `k=v` pairs are
  cast to the default's type. Unknown keys are rejected with the known ones.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    if "=" not in item:
      if "variant" not in defaults:
        raise ValueError(f"config argument {item!r}: expected key=value")
      out.variant = item
      continue
    key, value = (s.strip() for s in item.split("=", 1))
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: "
                       f"{sorted(defaults)}")
    kind = type(defaults[key])
    out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool \
        else kind(value)
  return out


def config_module(path: str | os.PathLike):
  """A configs/<name>.py file as a module (configs/ is not a package)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"dashclip_{name}_config",
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(path: str | os.PathLike, arg: str | None = None,
                overrides: dict | None = None) -> ml_collections.ConfigDict:
  """`path`'s get_config(arg) with {"a.b": value} overrides applied, as
  `--config=path:arg --config.a.b=value` gives it (for tests, notebooks)."""
  config = config_module(path).get_config(arg)
  for key in overrides or {}:
    if retired_key_error(key):
      raise ConfigError(retired_key_error(key))
  config.update_from_flattened_dict(dict(overrides or {}))
  return config


VARIANTS = ("tiny", "demo", "fashion", "base")


def by_variant(variant: str, *, tiny, demo, fashion, base):
  """The value of `variant` among the named variants (keywords only, so
  every call reads as a small table)."""
  return {"tiny": tiny, "demo": demo, "fashion": fashion, "base": base}[
      variant]


def stage_config(stage: str, arg: str | None
                 ) -> tuple[ml_collections.ConfigDict, str]:
  """-> (config, variant): what every stage config starts with (stage, seed,
  mesh, model, train, optim, eval and checkpoint blocks sized by the variant
  of `arg`). The caller sets the variant's steps, learning rate and the rest.
  """
  v = parse_arg(arg, variant="base").variant
  if v not in VARIANTS:
    raise ValueError(f"unknown {stage} variant {v!r}: "
                     f"{', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.seed = 0
  c.mesh = mesh_config()
  c.model = model_block(by_variant(
      v, tiny="tiny", demo="small", fashion="small", base="base"))
  # 64 px: the demo's images; the fashion run's budget (its photos are 128).
  c.model.image_size = by_variant(v, tiny=0, demo=64, fashion=64, base=0)
  c.train = train_block(
      batch_size=by_variant(v, tiny=8, demo=32, fashion=32, base=256),
      total_steps=0)
  c.train.fast_compile = v == "tiny"
  c.train.log_every = by_variant(v, tiny=2, demo=20, fashion=50, base=50)
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-5, init_lr=0.0, end_lr=0.0,
      warmup_steps=by_variant(v, tiny=1, demo=10, fashion=10, base=0),
      weight_decay=0.05, clip_norm=1.0,
      # "regex=mult; ...", first match wins, 0 freezes: "img/.*=0.1; .*=1".
      lr_mults=".*=1",
  ))
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=by_variant(v, tiny=16, demo=64, fashion=64, base=64)))
  c.checkpoint = checkpoint_block()
  return c, v


def mesh_config() -> list[tuple[str, int]]:
  # All devices on the data axis; fsdp/tensor are opt-in per experiment.
  return [("data", -1), ("fsdp", 1), ("tensor", 1)]


def model_block(size: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      size=size,           # dashclip_jax.model.model_config size.
      dtype="float32",     # Compute dtype; "bfloat16" on accelerators.
      remat=False,
      attention="einsum",  # "cudnn": fused ViT attention (model/attention.py).
      scan_layers=False,   # True: compile each tower's layers once (scan).
      image_size=0,        # 0: the size's own.
      text_dropout=-1.0,   # < 0: the size's own.
  ))


def checkpoint_block() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      every_steps=50, keep=2, async_save=True,
      best_metric="eval/hit@1",  # Kept besides `keep`; stage 2: ndcg@10.
  ))


def train_block(batch_size: int, total_steps: int
                ) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      batch_size=batch_size,  # Global batch.
      total_steps=total_steps,
      accum_steps=1,          # GradCache microbatches per step.
      log_every=10,
      eval_every=100,
      nan_policy="stop",      # "stop" or "skip" (skip the update, count it).
      fast_compile=False,     # XLA opt level 0 for the step (CI-scale runs).
  ))



def data_block(variant: str) -> ml_collections.ConfigDict:
  """config.data of every job: what to read (dashclip_jax.data.sources),
  which split evaluation ranks and ranking simulates, and how the trainers
  read it (trainers/inputs.py -> data.train_datasets / eval_datasets).

  Training, evaluation, curation and ranking all read this one block, so
  `--config.data.path=...` (or source, catalog_path, ...) moves each job.
  """
  v = variant
  embedded = v in ("tiny", "demo")
  return ml_collections.ConfigDict(dict(
      # Source: synthetic (embedded, no files), fashion (`path`: styles.csv +
      # images/ + relevance_train.csv + qrels_test.csv), table
      # (`catalog_path`: a CSV/Parquet catalog, relevance_*_path) or tfds
      # (`tfds_dir`).
      source="synthetic" if embedded else "fashion",
      path="../shared/data/fashion",
      catalog_path="",
      # query_id, query, product_id, label tables (a folder: its
      # relevance_train.csv / qrels_test.csv); for fashion they replace the
      # folder's own. The test relevance is what evaluation scores.
      relevance_train_path="",
      relevance_test_path="",
      tfds_dir="",
      synthetic=dict(
          num_products=by_variant(v, tiny=96, demo=400, fashion=400, base=400),
          num_train_queries=by_variant(v, tiny=24, demo=160, fashion=160,
                                       base=160),
          num_test_queries=by_variant(v, tiny=12, demo=60, fashion=60, base=60),
          image_size=64, test_fraction=0.2, seed=0,
          bad_images=0),  # >0: damage that many images (bad-data drills).
      # Above this fraction of bad records the run stops (BadDataError):
      # catalog/relevance rows at load, undecodable images in training once
      # min_seen_for_bad_fraction images were seen (counts are logged at
      # log steps either way).
      max_bad_fraction=0.01,
      # The test relevance's own limit (< 0: max_bad_fraction); the
      # evaluation job sets 0: a skipped row changes what it measures.
      relevance_test_max_bad_fraction=-1.0,
      min_seen_for_bad_fraction=50,
      test_fraction=0.1,      # Hash split where the catalog has no split.
      # The products evaluation ranks and ranking simulates, judged by that
      # split's relevance: test, train, or all (judged by the test's).
      split="test",
      probe_split="train",      # Evaluation's aisle probe trains on this
      max_probe_products=2000,  # split, at most this many (encoding cost).
      # Pipelines.
      num_shards=0,           # 0: one per process (see trainers/inputs.py).
      workers=0,              # grain worker processes (0: threads).
      worker_buffer_size=2,   # Examples buffered per worker.
      # Threads per process running the per-example transform; 0: min(cores,
      # 8) without workers, 1 per worker with them.
      read_threads=0,
      image_size=0,           # 0: the model's image size.
      # Images over this many pixels (read from the header) are bad images:
      # skipped, counted and named, never decoded (<= 0: no limit).
      max_image_pixels=50_000_000,
      text_max_length=by_variant(v, tiny=16, demo=24, fashion=24, base=30),
      query_max_length=by_variant(v, tiny=12, demo=16, fashion=16, base=20),
      min_scale=0.5,          # RandomResizedCrop (BLIP: 0.2 pretrain, 0.5 ft).
      augment=v != "tiny",
      num_negatives=by_variant(v, tiny=2, demo=4, fashion=4, base=8),
      # Stage 2: room for a query's relevant products, which are never its
      # in-batch negatives; a query with more stops the run (not truncated).
      max_relevant=256,
      label1_policy="weighted",  # Stage 2: positive | weighted | exclude.
      label1_weight=0.5,
      # Stage 2: this share of the train queries (by a hash of the text)
      # never trains; the run selects its model on them, not on the test set.
      heldout_query_fraction=0.1,
      # At most this many of them are evaluated (0: all): those with the
      # lowest text hash, the same on every machine. 2,000 queries pin
      # NDCG@10 to about +-0.01; at 640K queries the held-out tenth would
      # cost more per evaluation than the training between two of them.
      heldout_eval_queries=2000,
      # 0: all test products.
      eval_max_products=by_variant(v, tiny=16, demo=0, fashion=0, base=0),
  ))


# Keys of the per-job data blocks that config.data replaced -> (what to
# set instead, why); flag_error and data.sources name it in one line.
RETIRED_KEYS = {
    "data.catalog_dir": ("data.path", "a folder in the fashion layout, with "
                         "data.source=fashion; a table: data.catalog_path "
                         "with data.source=table"),
    "data.catalog_file": ("data.catalog_path", "the table's own path, with "
                          "data.source=table"),
    "data.qrels_path": ("data.relevance_test_path", ""),
    "data.qrels_max_bad_fraction": ("data.relevance_test_max_bad_fraction",
                                    ""),
    "data.columns": ("attributes", "the ranking job's attribute columns"),
    "max_bad_fraction": ("data.max_bad_fraction", ""),
    "final_eval.data": ("data", "the final evaluation reads config.data"),
}


def retired_key_error(key: str) -> str | None:
  """The one line for a retired config key (`data.catalog_dir`, a key below
  one, or a flag `--config.data.catalog_dir=x`: then it names flags), None
  for any other key."""
  flag = "--" if key.startswith("--") else ""
  key = key.split("=")[0].removeprefix("--").removeprefix("config.")
  new, why = _replacement(key)
  if new is None:
    return None
  return (f"{flag}config.{key} is no longer a config key: set "
          f"{flag}config.{new} instead" + (f" ({why})" if why else ""))


def _replacement(key: str) -> tuple[str | None, str]:
  """-> (the key that replaced `key`, why), following renames of renames
  (final_eval.data.qrels_path -> data.qrels_path -> data.relevance_test_path);
  (None, "") for a key that was never retired."""
  for old, (new, why) in RETIRED_KEYS.items():
    if key == old or key.startswith(old + "."):
      new += key[len(old):]
      newer, newer_why = _replacement(new)
      return (newer, newer_why or why) if newer else (new, why)
  return None, ""


# -- entry points: one-line errors --------------------------------------------


def _unquoted(text: str) -> str:
  """KeyError/AttributeError messages come repr'ed, sometimes twice."""
  while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    try:
      text = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      break
  return str(text)


def one_line(text: str) -> str:
  """An error message on one line, without KeyError's repr quotes."""
  return " ".join(_unquoted(text).split())


@contextlib.contextmanager
def one_line_errors(prog: str, errors: tuple[type[BaseException], ...]
                    ) -> Iterator[None]:
  """`errors` raised inside end the program as `<prog>: error: <message>`.

  Only errors whose message names the culprit belong in `errors`; anything
  else keeps its traceback (a bug, not a bad config).
  """
  try:
    yield
  except errors as e:
    sys.exit(f"{prog}: error: {one_line(str(e))}")


def check_workdir(workdir: str, flag: str = "--workdir") -> None:
  """Creates `workdir` and writes a file there, or raises ConfigError."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError(f"{flag}={workdir} is not a writable directory: "
                      f"{e.strerror or e}") from None


def flag_error(error: BaseException, argv: Sequence[str]) -> str:
  """One line naming the culprit of a config/override parsing failure."""
  chain = [error]
  while chain[-1].__cause__ or chain[-1].__context__:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  root = chain[-1]
  if isinstance(root, KeyError) and root.args:
    key = str(root.args[0])
    override = next((a.split("=")[0] for a in argv if a.startswith(
        "--config.") and key in a.split("=")[0].split(".")), "--config")
    retired = retired_key_error(override)
    if retired:
      return retired
    hints = [_unquoted(str(e)) for e in chain if "Did you mean" in str(e)]
    hint = one_line(hints[0].split("\n", 1)[-1]) if hints else ""
    return f"{override}: no such config key {key!r}. {hint}".strip()
  first = str(chain[0]).splitlines()[0]
  where = first.split(": ")[0] + ": " if first.startswith("flag --") else ""
  text = one_line(str(root))
  return text if text.startswith(where) else where + text


def flags_parser(prog: str):
  """An `app.run(flags_parser=...)` that reports bad flags in one line."""

  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except Exception as e:  # pylint: disable=broad-except
      sys.exit(f"{prog}: error: {flag_error(e, argv)}")

  return parse


# -- entry points: start-up ---------------------------------------------------


def start_logging() -> None:
  """INFO lines with their time for a job's main(); absl and faiss warn."""
  # force: absl's app.run has already put its own handler (and format) on
  # the root logger, which would make basicConfig a no-op.
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(levelname)s %(message)s",
                      datefmt="%H:%M:%S", force=True)
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.getLogger("faiss").setLevel(logging.WARNING)


def job_config(prog: str, config_flag: flags.FlagHolder,
               workdir: str | None) -> ml_collections.ConfigDict:
  """The job's --config; no --workdir, or a config file that failed to
  load, ends the program in one line."""
  if not workdir:
    sys.exit(f"{prog}: error: --workdir is required")
  try:
    config = config_flag.value
    config.get("stage")  # A config file that failed to load raises here.
  except OSError as e:
    sys.exit(f"{prog}: error: --config: " + one_line(str(e)))
  return config


class DistributedFlags:
  """The multi-process flags every entry point takes; `initialize()` runs
  `init_distributed` with their values."""

  def __init__(self):
    self.coordinator_address = flags.DEFINE_string(
        "coordinator_address", None,
        "host:port of process 0 for jax.distributed (multi-process runs); "
        "unset: auto-detected on SLURM/TPU pods, else single process.")
    self.num_processes = flags.DEFINE_integer(
        "num_processes", None, "Processes in a multi-process run.")
    self.process_id = flags.DEFINE_integer("process_id", None,
                                           "This process's id.")
    self.multihost = flags.DEFINE_bool(
        "multihost", False,
        "Call jax.distributed.initialize() with the platform's "
        "auto-detection (Cloud TPU pods, SLURM, ...); launch/tpu_pod.sh and "
        "slurm_gpu.sh set it.")

  def several_processes(self) -> bool:
    """Whether `initialize()` starts jax.distributed (init_distributed's
    rule), known before JAX is imported."""
    return bool(self.coordinator_address.value or self.multihost.value or
                int(os.environ.get("SLURM_NTASKS", "1")) > 1)

  def initialize(self) -> None:
    init_distributed(self.coordinator_address.value, self.num_processes.value,
                     self.process_id.value, self.multihost.value)


def init_distributed(coordinator_address: str | None,
                     num_processes: int | None, process_id: int | None,
                     multihost: bool) -> None:
  """jax.distributed.initialize where the run has several processes.

  Explicit (`coordinator_address`, e.g. localhost runs), platform
  auto-detection (`multihost`), or SLURM with more than one task.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  elif multihost or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()
  if jax.process_count() > 1:
    logging.getLogger("dashclip_jax").info(
        "process %d of %d; %d local / %d global devices", jax.process_index(),
        jax.process_count(), jax.local_device_count(), jax.device_count())
