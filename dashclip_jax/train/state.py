"""The train state: its pytree, its birth sharded on a mesh, its jitted step.

`init_state` builds a `TrainState` whose every leaf already lives where the
step wants it (params from their logical axes, optimizer moments and
momentum copies like their params, counts and queues replicated);
`jit_step` then compiles a step (`train_steps.make_stage1/2_step`) with
exactly that layout pinned in and out and the state donated, so the layout
never drifts between steps and one executable serves the whole run.
"""

from typing import TYPE_CHECKING, Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from dashclip_jax import losses
from dashclip_jax import model as model_lib
from dashclip_jax.train import sharding as shard_lib

if TYPE_CHECKING:  # train_steps builds on this module.
  from dashclip_jax.train import steps as train_steps

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
               cfg: "train_steps.StepConfig",
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


def jit_step(step_fn, state: TrainState, batch: dict[str, Array], mesh: Mesh,
             compiler_options: dict[str, Any] | None = None):
  """jax.jit with explicit in/out shardings and the state donated.

  `state`/`batch` are examples (concrete arrays) fixing the layout; metrics
  come back replicated. `compiler_options` go to XLA (the tests use
  {"xla_backend_optimization_level": 0} to halve CPU compile time).
  """
  st_sh = state_shardings(state)
  rep = shard_lib.replicated(mesh)
  return jax.jit(step_fn,
                 in_shardings=(st_sh, shard_lib.batch_shardings(batch, mesh),
                               rep),
                 out_shardings=(st_sh, rep), donate_argnums=(0,),
                 compiler_options=compiler_options)
