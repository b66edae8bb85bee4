"""The training loop both stages share, read top to bottom.

Per step: assemble the global batch -> the jitted step (compiled at the
first step, state donated) -> log (at log steps) -> eval (every
`train.eval_every`) -> checkpoint (every `checkpoint.every_steps`, at the
end, and on SIGTERM, after which the loop stops and raises `Preempted`).
"""

from __future__ import annotations

import jax
import ml_collections

from dashclip_jax.train import sharding as shard_lib
from dashclip_jax.train import state as train_state
from dashclip_jax.trainers import nonfinite
from dashclip_jax.trainers import preemption
from dashclip_jax.trainers import resume
from dashclip_jax.trainers import train_logger


def train_loop(config: ml_collections.ConfigDict, stage: str, state, *,
               train_iter, step_fn, mesh, evaluate, ckpts, writer, lr_at):
  """Steps `state` from its step to `config.train.total_steps`.

  `step_fn` is the stage's step wrapped by `nonfinite.guard_nonfinite`;
  `evaluate(params)` -> eval metrics; `ckpts` a `train.checkpoints.
  TrainCheckpoints`; `lr_at(step)` the learning rate, for the logs.
  """
  tc = config.train
  nonfinite.check_policy(tc.nan_policy)
  start_step = int(jax.device_get(state.step))
  logger = train_logger.TrainLogger(writer, tc, lr_at, start_step,
                                    data=train_iter)
  jit_step = None
  try:
    for step in range(start_step + 1, tc.total_steps + 1):
      batch = shard_lib.global_batch(next(train_iter), mesh)
      if jit_step is None:
        jit_step = train_state.jit_step(
            step_fn, train_state.state_shardings(state), batch, mesh,
            fast_compile=tc.fast_compile)
      state, metrics = jit_step(state, batch, step_rng(config.seed, step))
      last = step == tc.total_steps
      logger.step(step, metrics, last)
      eval_metrics = {}
      if step % tc.eval_every == 0 or last:
        eval_metrics = evaluate(state.params)
        logger.write(step, eval_metrics)
        resume.check_best_metric(config.checkpoint.best_metric, eval_metrics)
      every = config.checkpoint.every_steps
      stop = preemption.preemption_requested(
          sync_point=step % tc.log_every == 0 or step % every == 0 or last)
      if step % every == 0 or stop or last:
        ckpts.save(step, state,
                   resume.global_data_state(train_iter.get_state()),
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
    raise preemption.Preempted(f"{stage} pre-empted at step {final_step}; "
                               "the checkpoint is saved, rerun to resume")
  return state


def step_rng(seed: int, step: int) -> jax.Array:
  """The rng of a step: a function of (seed, step) only, so resume is exact."""
  return jax.random.fold_in(jax.random.key(seed), step)
