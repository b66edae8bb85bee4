"""Small pieces both trainers use (no trainer framework: see stage1/stage2)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from dashclip_jax import checkpoint_io
from dashclip_jax import checkpointing
from dashclip_jax import config_lib
from dashclip_jax import inference
from dashclip_jax import metric_writer
from dashclip_jax import model as model_lib
from dashclip_jax import optim
from dashclip_jax import pretrained
from dashclip_jax import sharding as shard_lib
from dashclip_jax import train_steps

log = logging.getLogger("dashclip_jax")


# The entry points print it as one line (a config value the trainers cannot
# use, named in the message); re-exported so trainers raise common.ConfigError.
ConfigError = config_lib.ConfigError


class InitCheckpointError(FileNotFoundError):
  """The configured init checkpoint does not exist or is not a model."""


class NonFiniteLossError(FloatingPointError):
  """A NaN/Inf loss under nan_policy="stop"."""


class Preempted(SystemExit):
  """SIGTERM arrived: a checkpoint was saved and the run stopped early."""


# ---------------------------------------------------------------------------
# Model and init checkpoint.
# ---------------------------------------------------------------------------


def resolve_init_checkpoint(path: str) -> str:
  """A model dir (converted or exported) or a training workdir -> model dir."""
  try:
    return inference.resolve_model_dir(path)
  except FileNotFoundError as e:
    raise InitCheckpointError(f"init checkpoint {path!r}: {e}") from None


def model_config_from(cfg: ml_collections.ConfigDict,
                      init_dir: str | None) -> model_lib.ModelConfig:
  """The init checkpoint's geometry when there is one, else `cfg.size`.

  Numerics and compilation (dtype, remat, attention, scan_layers,
  dropout) always come from the experiment config.
  """
  if init_dir:
    meta = checkpoint_io.read_metadata(init_dir)
    mc = model_lib.ModelConfig.from_dict(meta["model_config"])
  else:
    try:
      mc = model_lib.model_config(cfg.size)
    except ValueError as e:
      raise ConfigError(f"model.size: {e}") from None
  mc = mc.replace(dtype=cfg.dtype, remat=cfg.remat, attention=cfg.attention,
                  scan_layers=cfg.scan_layers)
  if cfg.image_size:
    mc = mc.replace(vision=dataclasses.replace(mc.vision,
                                               image_size=cfg.image_size))
  if cfg.text_dropout >= 0:
    mc = mc.replace(
        text=dataclasses.replace(mc.text, dropout=cfg.text_dropout),
        query=dataclasses.replace(mc.query, dropout=cfg.text_dropout))
  return mc


def mesh_and_init(config: ml_collections.ConfigDict, stage: str):
  """-> (mesh, init model dir or None, model config, init params or None).

  The mesh from `config.mesh` (the global batch must split over it); the
  model geometry and weights from `config.init.checkpoint` when set, else
  the text and query towers from `config.init.text_from` (pretrained.py)
  when set.
  """
  tc = config.train
  mesh = shard_lib.make_mesh([tuple(a) for a in config.mesh])
  shard_lib.check_batch_divisible(tc.batch_size, mesh)
  log.info("%s: mesh %s, global batch %d, %d steps", stage, dict(mesh.shape),
           tc.batch_size, tc.total_steps)
  init_dir = (resolve_init_checkpoint(config.init.checkpoint)
              if config.init.checkpoint else None)
  model_config = model_config_from(config.model, init_dir)
  init_params = (load_init_params(init_dir, model_config) if init_dir
                 else None)
  text_from = config.init.get("text_from", "")
  if text_from and init_dir:
    log.info("%s: init.text_from=%r ignored: init.checkpoint is set", stage,
             text_from)
  elif text_from:
    # Pretrained text/query towers; their geometry replaces the size's.
    model_config, init_params = pretrained.text_init(text_from, model_config,
                                                     config.seed)
  return mesh, init_dir, model_config, init_params


def init_name(config: ml_collections.ConfigDict, init_dir: str | None
              ) -> str:
  """Where a run's weights started, for logs and provenance."""
  if init_dir:
    return init_dir
  text_from = config.init.get("text_from", "")
  return f"text towers from {text_from}, rest random" if text_from \
      else "random"


def load_init_params(init_dir: str, model_config: model_lib.ModelConfig):
  """Params of a model dir, checked against the model's shapes."""
  _, trees, _ = checkpoint_io.load_model_dir(init_dir)
  params = trees["params"]
  expected = model_lib.abstract_params(model_config)
  flat_exp = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  flat_got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  name = lambda p: "/".join(str(getattr(k, "key", k)) for k in p)
  missing = sorted(name(p) for p in flat_exp if p not in flat_got)
  if missing:
    raise ValueError(f"init checkpoint {init_dir} lacks params: {missing[:5]}")
  for path, want in flat_exp.items():
    got = flat_got[path]
    if tuple(got.shape) != tuple(want.shape):
      raise ValueError(f"init checkpoint {init_dir}: {name(path)} has shape "
                       f"{tuple(got.shape)}, the model needs "
                       f"{tuple(want.shape)}")
  return jax.tree.map(lambda g, w: np.asarray(g, w.dtype), params, expected)


def host_params(params):
  """Params as host numpy on every process (gathers FSDP/tensor shards)."""
  if all(x.is_fully_addressable or x.is_fully_replicated
         for x in jax.tree.leaves(params)):
    return jax.tree.map(np.asarray, jax.device_get(params))
  return jax.tree.map(np.asarray,
                      multihost_utils.process_allgather(params, tiled=True))


def export_model(workdir: str, step: int, params,
                 model_config: model_lib.ModelConfig,
                 provenance: dict[str, Any]) -> str:
  """Writes `<workdir>/models/<step>`: what `dashclip_jax.load` reads.

  Every process must call it (the gather is collective); process 0 writes,
  and all return once the directory is complete.
  """
  out = os.path.join(workdir, "models", str(step))
  done = os.path.exists(os.path.join(out, checkpoint_io.METADATA_FILE))
  if not done:
    host = host_params(params)
    if jax.process_index() == 0:
      checkpoint_io.save_model_dir(out, host, model_config,
                                   provenance=provenance)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"export {out}")
  return out


# ---------------------------------------------------------------------------
# Optimiser / step options from the config.
# ---------------------------------------------------------------------------


def parse_lr_mults(spec) -> tuple[tuple[str, float], ...]:
  """"regex=mult; regex=mult; ..." (the form a command line can override)
  or a sequence of (regex, mult) pairs -> pairs; first match wins."""
  if not isinstance(spec, str):
    return tuple((str(p), float(m)) for p, m in spec)
  out = []
  for item in filter(None, (s.strip() for s in spec.split(";"))):
    regex, sep, mult = item.rpartition("=")
    try:
      if not sep or not regex.strip():
        raise ValueError
      out.append((regex.strip(), float(mult)))
    except ValueError:
      raise ConfigError(f"optim.lr_mults: {item!r} is not 'regex=mult' "
                        "(rules are separated by ';')") from None
  return tuple(out)


def optim_config(cfg: ml_collections.ConfigDict, total_steps: int
                 ) -> optim.OptimConfig:
  """The optimizer of `cfg` (config.optim). Its `lr_mults` are the only
  freezing rules: no built-in rule comes before them."""
  mults = parse_lr_mults(cfg.lr_mults)
  return optim.OptimConfig(
      lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=total_steps,
      init_lr=cfg.init_lr, end_lr=cfg.end_lr, weight_decay=cfg.weight_decay,
      clip_norm=cfg.clip_norm if cfg.clip_norm > 0 else None,
      lr_mults=mults)


def step_config(cfg: ml_collections.ConfigDict, accum_steps: int
                ) -> train_steps.StepConfig:
  fields = {f.name for f in dataclasses.fields(train_steps.StepConfig)}
  values = {k: v for k, v in cfg.to_dict().items() if k in fields}
  unknown = set(cfg.to_dict()) - fields
  if unknown:
    raise ConfigError(f"unknown loss options {sorted(unknown)}; known: "
                     f"{sorted(fields)}")
  if values.get("momentum") is not None and values["momentum"] <= 0:
    values["momentum"] = None
  if values.get("hard_k") is not None and values["hard_k"] <= 0:
    values["hard_k"] = None
  return train_steps.StepConfig(accum_steps=accum_steps, **values)


def compiler_options(train_cfg: ml_collections.ConfigDict
                     ) -> dict[str, Any] | None:
  """XLA options of the train step: opt level 0 compiles about twice as fast
  on CPU and runs slower; for CI-scale runs (`train.fast_compile`)."""
  if train_cfg.get("fast_compile"):
    return {"xla_backend_optimization_level": 0}
  return None


# ---------------------------------------------------------------------------
# Loop helpers.
# ---------------------------------------------------------------------------


_SIGTERM_RECEIVED = threading.Event()


def install_sigterm_handler() -> None:
  """From now on SIGTERM (the pre-emption notice) only sets a flag that the
  training loops poll: they save a checkpoint and exit. Idempotent."""
  def handler(signum, frame):  # pylint: disable=unused-argument
    log.warning("SIGTERM: saving a checkpoint after this step and exiting")
    _SIGTERM_RECEIVED.set()
  try:
    signal.signal(signal.SIGTERM, handler)
  except ValueError:  # Not the main thread (e.g. some test runners).
    log.warning("not the main thread: SIGTERM will not save a checkpoint")


def preemption_requested(sync_point: bool) -> bool:
  """Asked once per step; True: save and stop after this step.

  One process answers from its own flag every step. Several processes agree
  (any signalled -> all stop after the same step, so none waits in a
  collective of a step the others skipped), but only at `sync_point` steps:
  the agreement is a host round trip that would otherwise stall the
  asynchronous dispatch of every step.
  """
  requested = _SIGTERM_RECEIVED.is_set()
  if jax.process_count() == 1:
    return requested
  if not sync_point:
    return False
  flags = multihost_utils.process_allgather(np.asarray(requested, np.int32))
  return bool(np.any(flags))


def guard_nonfinite(step_fn):
  """Wraps a step so a NaN/Inf loss leaves the state untouched.

  The step's metrics gain "nonfinite" (1.0 when the update was dropped); the
  trainer fetches these flags at log steps only and stops or counts them.
  """
  def guarded(state, batch, rng):
    new, metrics = step_fn(state, batch, rng)
    ok = jnp.isfinite(metrics["loss"])
    new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
    return new, {**metrics, "nonfinite": 1.0 - ok.astype(jnp.float32)}
  return guarded


def check_nonfinite(steps: list[int], flags: list[jax.Array],
                    policy: str) -> int:
  """Number of skipped steps among `steps`; raises under policy "stop"."""
  bad = [s for s, f in zip(steps, jax.device_get(flags)) if float(f) > 0]
  if bad and policy != "skip":
    raise NonFiniteLossError(
        f"loss is NaN/Inf at step {bad[0]}; stopping (the state before it is "
        "kept; --config.train.nan_policy=skip skips such steps instead)")
  for s in bad:
    log.warning("non-finite loss at step %d: update skipped", s)
  return len(bad)


def global_data_state(local_state: dict[str, Any]) -> dict[str, Any]:
  """Every process's data iterator state in one JSON-able dict.

  Orbax writes JSON items from the primary process only, so each process's
  shard states are gathered first (`inputs.ShardedBatches` keys them by
  shard, and each process picks its own on restore).
  """
  if jax.process_count() == 1:
    return local_state
  raw = np.frombuffer(json.dumps(local_state).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray(len(raw), np.int32))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:len(raw)] = raw
  every = multihost_utils.process_allgather(padded)
  merged: dict[str, Any] = {"shards": {}}
  for row, size in zip(every, sizes):
    merged["shards"].update(json.loads(bytes(row[:int(size)]))["shards"])
  return merged


def step_rng(seed: int, step: int) -> jax.Array:
  """The rng of a step: a function of (seed, step) only, so resume is exact."""
  return jax.random.fold_in(jax.random.key(seed), step)


def host_metrics(metrics: dict[str, jax.Array], prefix: str = "train/"
                 ) -> dict[str, float]:
  return {prefix + k: float(v) for k, v in jax.device_get(metrics).items()}


def make_state(model_config: model_lib.ModelConfig,
               step_cfg: train_steps.StepConfig, optim_cfg: optim.OptimConfig,
               seed: int, mesh, init_params=None, init_momentum=None,
               init_queue=None):
  """-> (optax transformation, TrainState born sharded on `mesh`).

  `init_momentum`/`init_queue`: momentum encoders and ITC queues to start
  from (stage 1 from a converted BLIP), else copies and random queues.
  """
  tx = optim.make_optimizer(optim_cfg,
                            model_lib.abstract_params(model_config))
  state = train_steps.init_state(model_config, step_cfg, tx,
                                 jax.random.key(seed), mesh,
                                 params=init_params, params_m=init_momentum,
                                 queue=init_queue)
  return tx, state


def open_checkpoints(config: ml_collections.ConfigDict, workdir: str
                     ) -> checkpointing.TrainCheckpoints:
  """The workdir's checkpoints; with `checkpoint.restart` the previous run's
  outputs are first moved aside (kept, and named in the log)."""
  c = config.checkpoint
  if c.get("restart", False):
    moved = checkpointing.set_aside_run(workdir)
    if moved:
      log.warning("checkpoint.restart=True: starting over; the previous "
                  "run's outputs are moved to %s", moved)
  # Saved with each checkpoint, so a resume can say what changed; the
  # restart switches themselves are not part of a run.
  saved = {k: v for k, v in checkpointing.flatten_config(
      config.to_dict()).items() if not k.endswith("checkpoint.restart")}
  return checkpointing.TrainCheckpoints(
      workdir, keep=c.keep, best_metric=c.best_metric or None,
      async_save=c.async_save, config=saved)


def restore(ckpts: checkpointing.TrainCheckpoints, state, train_iter):
  """Resume from the workdir's newest readable checkpoint, if any.

  Returns (state, resumed?): the state and the data iterator continue where
  the checkpoint left them; otherwise both stay as given.
  """
  workdir = os.path.dirname(ckpts.directory)
  # A stage-2 main job runs its stage 1 in <workdir>/stage1.
  nested = os.path.basename(workdir) == "stage1" and os.path.isfile(
      os.path.join(os.path.dirname(workdir), "config.json"))
  restart = ("to start over, rerun with --config."
             f"{'stage1.' if nested else ''}checkpoint.restart=True (the old "
             "run is moved aside)")
  try:
    restored = ckpts.restore(state)
  except checkpointing.StateMismatchError as e:
    raise ConfigError(f"{e}. Rerun with the old values to resume, or "
                      f"{restart}") from None
  if restored is None:
    return state, False
  state, data_state, meta = restored
  try:
    train_iter.set_state(data_state)
  except ValueError as e:  # E.g. data.num_shards changed.
    raise ConfigError(f"{ckpts.directory}/{meta['step']}: {e}; or "
                      f"{restart}") from None
  log.info("resumed from %s at step %d", ckpts.directory, meta["step"])
  return state, True


class TrainLogger:
  """Step metrics -> metrics.jsonl/TensorBoard/console at log steps only.

  Device values are fetched only every `train.log_every` steps (and at the
  last one); the NaN/Inf flags of the steps in between are checked then,
  under `train.nan_policy`. With `data` (the train iterator, e.g.
  `inputs.ShardedBatches`), log steps also count its bad images
  (train/examples_seen, train/bad_images, train/bad_image_fraction) and
  log a warning naming the culprits whenever new ones were skipped.
  """

  def __init__(self, writer: metric_writer.MetricWriter,
               train_cfg: ml_collections.ConfigDict, lr_at, start_step: int,
               data: Any = None):
    self.writer, self.cfg, self.lr_at = writer, train_cfg, lr_at
    self._pending_steps, self._pending_flags = [], []
    self._t_last, self._n_last = time.time(), start_step
    self._data, self._bad_reported = data, 0

  def step(self, step: int, metrics: dict[str, jax.Array], last: bool
           ) -> None:
    self._pending_steps.append(step)
    self._pending_flags.append(metrics["nonfinite"])
    if step % self.cfg.log_every and not last:
      return
    skipped = check_nonfinite(self._pending_steps, self._pending_flags,
                              self.cfg.nan_policy)
    self._pending_steps, self._pending_flags = [], []
    host = host_metrics(metrics)
    now, done = time.time(), step - self._n_last
    host["train/examples_per_s"] = (done * self.cfg.batch_size /
                                    max(now - self._t_last, 1e-9))
    host["train/step_time_s"] = (now - self._t_last) / max(done, 1)
    host["train/lr"] = float(self.lr_at(step - 1))
    host["train/skipped_steps"] = float(skipped)
    host.update(self._bad_data(step))
    self._t_last, self._n_last = now, step
    self.write(step, host)

  def _bad_data(self, step: int) -> dict[str, float]:
    report = getattr(self._data, "bad_report", None)
    if report is None:
      return {}
    seen, bad, summary = report()
    if bad > self._bad_reported:
      log.warning("train data at step %d: %d bad images of %d examples "
                  "seen; %s", step, bad, seen, summary)
    self._bad_reported = bad
    return {"train/examples_seen": float(seen), "train/bad_images": float(bad),
            "train/bad_image_fraction": bad / max(seen, 1)}

  def write(self, step: int, metrics: dict[str, float]) -> None:
    self.writer.write(step, metrics)
    self.writer.progress(step, metrics)


NAN_POLICIES = ("stop", "skip")


def train_loop(config: ml_collections.ConfigDict, stage: str, state,
               train_iter, step_fn, mesh, evaluate, ckpts, writer, lr_at):
  """Steps `state` from its step to `config.train.total_steps`.

  Per step: assemble the global batch, run the jitted step (compiled at the
  first step, state donated); at log steps fetch and write metrics; every
  `eval_every` steps write `evaluate(params)`; checkpoint every
  `checkpoint.every_steps`, at the end, and on SIGTERM (then raise
  `Preempted` once the checkpoint is written).
  """
  tc = config.train
  if tc.nan_policy not in NAN_POLICIES:
    raise ConfigError(f"train.nan_policy={tc.nan_policy!r}: use one of "
                      f"{NAN_POLICIES}")
  start_step = int(jax.device_get(state.step))
  logger = TrainLogger(writer, tc, lr_at, start_step, data=train_iter)
  jit_step = None
  try:
    for step in range(start_step + 1, tc.total_steps + 1):
      batch = shard_lib.global_batch(next(train_iter), mesh)
      if jit_step is None:
        jit_step = train_steps.jit_step(step_fn, state, batch, mesh,
                                        compiler_options=compiler_options(tc))
      state, metrics = jit_step(state, batch, step_rng(config.seed, step))
      last = step == tc.total_steps
      logger.step(step, metrics, last)
      eval_metrics = {}
      if step % tc.eval_every == 0 or last:
        eval_metrics = evaluate(state.params)
        logger.write(step, eval_metrics)
      every = config.checkpoint.every_steps
      stop = preemption_requested(
          sync_point=step % tc.log_every == 0 or step % every == 0 or last)
      if step % every == 0 or stop or last:
        ckpts.save(step, state, global_data_state(train_iter.get_state()),
                   {**eval_metrics, "seed": config.seed}, wait=stop or last)
      if stop:
        break
  finally:
    # Also when a step raises (bad data, a NaN under "stop"): an earlier
    # step's async save completes before the error reaches the interpreter's
    # shutdown (else hundreds of lines of Orbax tracebacks), metrics flush.
    ckpts.close()
    writer.close()
  final_step = int(jax.device_get(state.step))
  if final_step < tc.total_steps:
    raise Preempted(f"{stage} pre-empted at step {final_step}; the "
                    "checkpoint is saved, rerun to resume")
  return state


def embed_all(fn, params, batches: list[dict[str, np.ndarray]], mesh
              ) -> tuple[np.ndarray, ...]:
  """Runs a jitted eval fn over this process's eval batches.

  `fn(params, global batch)` returns replicated arrays, the last one the
  rows' valid flags; the others come back as host arrays of the valid rows
  of every batch, concatenated.
  """
  parts = []
  for local in batches:
    *outs, valid = jax.device_get(fn(params, shard_lib.global_batch(local,
                                                                    mesh)))
    keep = valid.astype(bool)
    parts.append([x[keep] for x in outs])
  return tuple(np.concatenate(column) for column in zip(*parts))


def retrieval_at_1(a: np.ndarray, b: np.ndarray, ids: np.ndarray) -> float:
  """Fraction of rows of `a` whose nearest `b` row shares its id."""
  sims = a @ b.T
  best = np.argmax(sims, axis=1)
  return float(np.mean(ids[best] == ids))


def copy_text_to_query(params, model_config: model_lib.ModelConfig):
  """Query tower <- text encoder (no cross-attention) and query_proj <-
  product_proj, when the geometries match (DashCLIP's query initialisation).

  product_proj, not text_proj: stage 2 matches queries to product
  embeddings, so the query side starts as the product side's text path
  (from a BLIP conversion both equal text_proj; after a MiniLM init both
  are the identity, and text_proj is stage 1's ITC head).
  """
  if (model_config.query.width, model_config.query.depth) != (
      model_config.text.width, model_config.text.depth):
    log.warning("query and text towers differ in shape: query tower kept")
    return params
  query = jax.tree.map(np.array, params["txt"])  # A copy: popped below.
  for layer in query.values():
    if isinstance(layer, dict):
      layer.pop("cross_attn", None)
      layer.pop("cross_attn_norm", None)
  if jax.tree.structure(query) != jax.tree.structure(params["query"]):
    log.warning("query tower layout differs from the text encoder's: kept")
    return params
  return {**params, "query": query,
          "query_proj": jax.tree.map(np.array, params["product_proj"])}
