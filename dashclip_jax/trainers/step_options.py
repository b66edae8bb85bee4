"""The config's optimizer and loss options, and the state they make.

Sentinels of the config become the library's None here: `optim.clip_norm`
<= 0 (no clipping), `loss.momentum`/`loss.hard_k` <= 0 (off).
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from dashclip_jax import model as model_lib
from dashclip_jax.runtime import config_files
from dashclip_jax.train import optim
from dashclip_jax.train import state as train_state
from dashclip_jax.train import step_config as step_config_lib


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
      raise config_files.ConfigError(
          f"optim.lr_mults: {item!r} is not 'regex=mult' (rules are "
          "separated by ';')") from None
  return tuple(out)


def step_config(cfg: ml_collections.ConfigDict, accum_steps: int
                ) -> step_config_lib.StepConfig:
  """config.loss -> StepConfig (unknown options are an error)."""
  fields = {f.name for f in dataclasses.fields(step_config_lib.StepConfig)}
  values = {k: v for k, v in cfg.to_dict().items() if k in fields}
  unknown = set(cfg.to_dict()) - fields
  if unknown:
    raise config_files.ConfigError(f"unknown loss options {sorted(unknown)}; "
                                   f"known: {sorted(fields)}")
  if values.get("momentum") is not None and values["momentum"] <= 0:
    values["momentum"] = None
  if values.get("hard_k") is not None and values["hard_k"] <= 0:
    values["hard_k"] = None
  return step_config_lib.StepConfig(accum_steps=accum_steps, **values)


def make_state(model_config: model_lib.ModelConfig,
               step_cfg: step_config_lib.StepConfig,
               optim_cfg: optim.OptimConfig, seed: int, mesh,
               init_params=None, init_momentum=None, init_queue=None):
  """-> (optax transformation, TrainState born sharded on `mesh`).

  `init_momentum`/`init_queue`: momentum encoders and ITC queues to start
  from (stage 1 from a converted BLIP), else copies and random queues.
  """
  tx = optim.make_optimizer(optim_cfg,
                            model_lib.abstract_params(model_config))
  state = train_state.init_state(model_config, step_cfg, tx,
                                 jax.random.key(seed), mesh,
                                 params=init_params, params_m=init_momentum,
                                 queue=init_queue)
  return tx, state
