"""Device mesh, logical-axis rules and shardings for params and batches.

The mesh has three named axes: "data" (pure data parallel), "fsdp" (data
parallel with parameters/optimizer state sharded along "embed") and "tensor"
(model parallel over "mlp"/"heads"/"vocab"). The batch is split over
("data", "fsdp"); losses are written on global arrays so XLA gathers
whatever the contrastive terms need, and any mesh shape gives the same loss.

Config form (big_vision style): `[("data", -1), ("fsdp", 1), ("tensor", 1)]`,
with -1 meaning "all remaining devices".
"""

from collections.abc import Sequence
import logging
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dashclip_jax.runtime.config_files import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

log = logging.getLogger("dashclip_jax")

# Logical axis names used by dashclip_jax.model -> mesh axes.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("pos", None),
    ("patch", None),
    ("proj", None),
)


def mesh_shape(config: Sequence[tuple[str, int]], n_devices: int
               ) -> tuple[int, ...]:
  """Resolves a [(axis, size)] config (one -1 allowed) to sizes in MESH_AXES order.

  Axes missing from the config get size 1.
  """
  sizes = dict(config)
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f"mesh config: unknown axes {sorted(unknown)}; "
                      f"use {MESH_AXES}.")
  if len(sizes) != len(config):
    raise ConfigError(f"mesh config: repeated axis in {config}.")
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ConfigError(f"mesh config: at most one -1 axis, got {free}.")
  fixed = int(np.prod([s for s in sizes.values() if s != -1]))
  if fixed <= 0 or n_devices % fixed:
    raise ConfigError(f"mesh config {config}: fixed sizes (product {fixed}) "
                      f"do not divide {n_devices} devices.")
  if free:
    sizes[free[0]] = n_devices // fixed
  shape = tuple(sizes.get(a, 1) for a in MESH_AXES)
  if int(np.prod(shape)) != n_devices:
    raise ConfigError(f"mesh config {config} uses {int(np.prod(shape))} "
                      f"devices, have {n_devices}.")
  return shape


def make_mesh(config: Sequence[tuple[str, int]] = (("data", -1),),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh over `devices` (default all) with axes ("data", "fsdp", "tensor").

  Auto axis types: shardings are propagated by XLA (GSPMD) from the in/out
  shardings and the batch constraints of the train steps.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(config, len(devices))
  return jax.make_mesh(shape, MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


# (name, shape, replicated dims) already logged: one line per param, not
# one per call (state init, restore and export each resolve shardings).
_LOGGED_REPLICATED: set[tuple[str, tuple[int, ...], str]] = set()


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh,
              name: str = "") -> P:
  """Replaces any mesh axis that does not divide its dim by None (replicate).

  Each param so replicated is logged once, by `name` and shape: it costs
  memory on every device of that axis.
  """
  out, undivided = [], []
  for i, (dim, axes) in enumerate(zip(
      shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
    if axes is None:
      out.append(None)
      continue
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    size = int(np.prod([mesh.shape[a] for a in names]))
    out.append(axes if dim % size == 0 else None)
    if dim % size:
      undivided.append(f"dim {i} ({dim}) over "
                       + "x".join(f"{a}={mesh.shape[a]}" for a in names))
  key = (name, tuple(shape), "; ".join(undivided))
  if undivided and key not in _LOGGED_REPLICATED:
    _LOGGED_REPLICATED.add(key)
    log.warning("sharding: %s %s replicated, not sharded: %s does not "
                "divide", name or "a param", tuple(shape), key[2])
  return P(*out)


def logical_to_sharding(logical_specs: Any, shapes: Any, mesh: Mesh,
                        rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
                        ) -> Any:
  """Logical PartitionSpecs + shapes -> NamedShardings, never uneven.

  Args:
    logical_specs: pytree of PartitionSpec with logical names (e.g. from
      `nn.get_partition_spec(jax.eval_shape(init))`).
    shapes: pytree with the same structure of objects with `.shape`.
    mesh: the mesh.
    rules: logical name -> mesh axis (or tuple of axes, or None).

  Returns:
    Pytree of NamedSharding; a dim whose size is not divisible by its mesh
    axes is replicated instead of sharded unevenly (logged once per param,
    with its name and shape).
  """
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  return jax.tree_util.tree_map_with_path(
      lambda path, spec, x: NamedSharding(mesh, _fit_spec(
          spec, x.shape, mesh, jax.tree_util.keystr(path, simple=True,
                                                    separator="/"))),
      mesh_specs, shapes, is_leaf=lambda x: isinstance(x, P))


def param_shardings(abstract_boxed_params: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
  """Shardings for params from `jax.eval_shape(init)` (boxed, logical names).

  Returns a pytree matching the *unboxed* params.
  """
  specs = nn.get_partition_spec(abstract_boxed_params)
  shapes = nn.meta.unbox(abstract_boxed_params)
  return logical_to_sharding(specs, shapes, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) dim over ("data", "fsdp"), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def batch_shardings(batch: Any, mesh: Mesh) -> Any:
  """Pytree of batch shardings matching `batch` (arrays or ShapeDtypeStructs)."""
  return jax.tree.map(lambda x: batch_sharding(mesh, np.ndim(x) if not hasattr(
      x, "ndim") else x.ndim), batch)


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % n:
    raise ConfigError(f"global batch {batch_size} is not divisible by the "
                      f"data*fsdp mesh size {n}.")


def local_batch_size(batch_size: int, mesh: Mesh, what: str = "batch") -> int:
  """-> this process's rows of a global `batch_size` (checked to divide the
  data*fsdp mesh and the process count; `what` names the batch in errors)."""
  check_batch_divisible(batch_size, mesh)
  n_proc = jax.process_count()
  if batch_size % n_proc:
    raise ConfigError(f"{what} {batch_size} is not divisible by the "
                      f"{n_proc} processes")
  return batch_size // n_proc


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh
                 ) -> dict[str, jax.Array]:
  """Assembles each process's slice into global arrays sharded over the batch.

  Every process passes its own rows (global_batch / process_count of them,
  in process order); on one host that is simply the whole batch. Shapes are
  checked per key so a wrong slice fails loudly, naming the key.
  """
  n_proc = jax.process_count()
  out = {}
  for key, x in local_batch.items():
    x = np.asarray(x)
    if x.ndim == 0:
      raise ValueError(f"batch key {key!r} is a scalar; need a batch dim.")
    global_shape = (x.shape[0] * n_proc,) + x.shape[1:]
    check_batch_divisible(global_shape[0], mesh)
    out[key] = jax.make_array_from_process_local_data(
        batch_sharding(mesh, x.ndim), x, global_shape)
  return out


def optimizer_shardings(tx: optax.GradientTransformation, opt_state: Any,
                        param_sh: Any, mesh: Mesh) -> Any:
  """Shardings of an optimizer state (concrete or abstract) of `tx`.

  Each param-shaped subtree (Adam's mu/nu inside any optax wrapper, e.g.
  multi_transform's inner states) takes the params' shardings, as
  `optax.tree_map_params` finds them from `tx`'s own structure; the rest
  (counts, scalars) is replicated. XLA propagation through `tx.init` does
  not do this by itself: zeros_like starts a new constant.
  """
  masked = lambda x: isinstance(x, optax.MaskedNode)  # Frozen by lr_mults.
  rep = replicated(mesh)
  return optax.tree_map_params(
      tx, lambda x, s: x if masked(x) else s, opt_state, param_sh,
      transform_non_params=lambda _: rep, is_leaf=masked)
