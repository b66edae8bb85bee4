"""The train state: its pytree, its birth sharded on a mesh, its jitted step.

`init_state` builds a `TrainState` whose every leaf already lives where the
step wants it (params from their logical axes, optimizer moments and
momentum copies like their params, counts and queues replicated);
`init_param_state` does the same for the plain trainers' `ParamState`
(teacher, GPT fine-tune, click model). `jit_step` then compiles any of
their steps with exactly that layout pinned in and out and the state
donated, so the layout never drifts between steps and one executable serves
the whole run.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from dashclip_jax import losses
from dashclip_jax import model as model_lib
from dashclip_jax.train import sharding as shard_lib
from dashclip_jax.train import step_config


Array = jax.Array

# Modules with BLIP momentum copies (BLIP_REFERENCE §1.4).
MOMENTUM_MODULES = ("img", "txt", "vision_proj", "text_proj")


@flax.struct.dataclass
class TrainState:
  """Everything a step updates; a plain pytree (no methods, no callables)."""
  step: Array  # () int32
  params: Any
  opt_state: Any
  params_m: Any = None  # Momentum copies of MOMENTUM_MODULES (stage 1 MD).
  queue: Any = None  # losses.init_queue(...) dict (stage 1 MD).


def init_state(model_config: model_lib.ModelConfig,
               cfg: step_config.StepConfig,
               tx: optax.GradientTransformation, rng: Array,
               mesh: Mesh | None = None, rules=shard_lib.DEFAULT_RULES,
               params: Any = None, params_m: Any = None,
               queue: Any = None) -> TrainState:
  """A TrainState born sharded on `mesh` (params from the logical axes).

  `params` (unboxed) replaces the random init, e.g. a converted checkpoint;
  under momentum distillation `params_m` (MOMENTUM_MODULES' trees) replaces
  the copies of the online encoders and `queue` (a `losses.init_queue`
  dict) the random queues, e.g. BLIP's. Optimizer moments and momentum
  copies take their param's sharding (FSDP shards them too); counts and
  queues are replicated.
  """
  r_init, r_q = jax.random.split(rng)
  abstract = jax.eval_shape(
      lambda r: model_lib.init_params(model_config, r), r_init)
  if mesh is not None:
    p_sh = shard_lib.param_shardings(abstract, mesh, rules)
  else:
    p_sh = None
  if params is None:
    params = jax.jit(
        lambda r: model_lib.unbox(model_lib.init_params(model_config, r)),
        out_shardings=p_sh)(r_init)
  elif p_sh is not None:
    params = jax.device_put(params, p_sh)

  def rest(p, r, given_m, given_q):
    opt_state = tx.init(p)
    params_m = queue = None
    if cfg.momentum is not None:
      params_m = given_m if given_m is not None else {
          n: jax.tree.map(jnp.copy, p[n]) for n in MOMENTUM_MODULES}
      if cfg.queue_size:
        queue = given_q if given_q is not None else losses.init_queue(
            r, cfg.queue_size, model_config.embed_dim)
    return TrainState(step=jnp.zeros((), jnp.int32), params=p,
                      opt_state=opt_state, params_m=params_m, queue=queue)

  if mesh is None:
    return jax.jit(rest)(params, r_q, params_m, queue)
  rep = shard_lib.replicated(mesh)
  m_sh = None if params_m is None else {n: p_sh[n] for n in MOMENTUM_MODULES}
  q_sh = None if queue is None else jax.tree.map(lambda _: rep, queue)
  if params_m is not None:
    params_m = jax.device_put(params_m, m_sh)
  if queue is not None:
    queue = jax.device_put(queue, q_sh)
  abstract_state = jax.eval_shape(rest, params, r_q, params_m, queue)
  st_sh = TrainState(
      step=rep, params=p_sh,
      opt_state=shard_lib.optimizer_shardings(
          tx, abstract_state.opt_state, p_sh, mesh),
      params_m=None if abstract_state.params_m is None else
      {n: p_sh[n] for n in MOMENTUM_MODULES},
      queue=None if abstract_state.queue is None else
      jax.tree.map(lambda _: rep, abstract_state.queue))
  return jax.jit(rest, in_shardings=(p_sh, rep, m_sh, q_sh),
                 out_shardings=st_sh)(params, r_q, params_m, queue)


def state_shardings(state: TrainState) -> Any:
  """Shardings of a (concrete) state, to pin the step's in/out shardings."""
  return jax.tree.map(lambda x: x.sharding, state)


@flax.struct.dataclass
class ParamState:
  """The state of the plain trainers (teacher, GPT fine-tune, click model):
  a step count, the tree the optimizer moves and its optimizer state."""
  step: Array  # () int32
  params: Any  # The params, or under LoRA the LoRA tree.
  opt_state: Any


def init_param_state(params: Any, param_sh: Any,
                     tx: optax.GradientTransformation, mesh: Mesh
                     ) -> tuple[ParamState, ParamState]:
  """-> (a ParamState born sharded on `mesh`, its shardings).

  `params` go to `param_sh`; the optimizer's moments take their param's
  sharding (`sharding.optimizer_shardings`), counts and the step are
  replicated.
  """
  params = jax.device_put(params, param_sh)
  opt_sh = shard_lib.optimizer_shardings(
      tx, jax.eval_shape(tx.init, params), param_sh, mesh)
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  rep = shard_lib.replicated(mesh)
  state = ParamState(jax.device_put(jnp.zeros((), jnp.int32), rep), params,
                     opt_state)
  return state, ParamState(rep, param_sh, opt_sh)


# XLA opt level 0: compiles about twice as fast on CPU and runs slower; for
# CI-scale runs (`train.fast_compile` and the trainers' settings).
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0}


def jit_step(step_fn, state_sh: Any, batch: dict[str, Any], mesh: Mesh, *,
             extra_sh: Any = None, fast_compile: bool = False):
  """jax.jit of `step_fn(state, batch, extra) -> (state, metrics)` with
  every layout pinned, so it never drifts between steps.

  The state stays on `state_sh` in and out and is donated; `batch` (an
  example, concrete or abstract) is split over the mesh's batch axes;
  `extra` (the step's rng, frozen tables or frozen params) lies on
  `extra_sh`, replicated by default; the metrics come back replicated.
  """
  rep = shard_lib.replicated(mesh)
  return jax.jit(
      step_fn,
      in_shardings=(state_sh, shard_lib.batch_shardings(batch, mesh),
                    rep if extra_sh is None else extra_sh),
      out_shardings=(state_sh, rep), donate_argnums=(0,),
      compiler_options=FAST_COMPILE_OPTIONS if fast_compile else None)
