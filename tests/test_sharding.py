"""Mesh construction, logical-axis param shardings, global batch assembly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dashclip_jax import model as model_lib
from dashclip_jax.train import sharding


@pytest.mark.parametrize("cfg,want", [
    ([("data", -1)], (8, 1, 1)),
    ([("data", -1), ("fsdp", 1), ("tensor", 1)], (8, 1, 1)),
    ([("data", 2), ("fsdp", -1)], (2, 4, 1)),
    ([("fsdp", -1), ("tensor", 2)], (1, 4, 2)),
    ([("data", 2), ("fsdp", 2), ("tensor", 2)], (2, 2, 2)),
])
def test_mesh_shape(cfg, want):
  assert sharding.mesh_shape(cfg, 8) == want
  mesh = sharding.make_mesh(cfg)
  assert tuple(mesh.shape.values()) == want
  assert mesh.axis_names == sharding.MESH_AXES


@pytest.mark.parametrize("cfg,msg", [
    ([("data", 3)], "do not divide"),
    ([("data", -1), ("fsdp", -1)], "at most one -1"),
    ([("batch", 8)], "unknown axes"),
    ([("data", 2), ("fsdp", 2)], "uses 4 devices"),
])
def test_mesh_config_errors(cfg, msg):
  with pytest.raises(ValueError, match=msg):
    sharding.mesh_shape(cfg, 8)


def test_undivisible_dims_are_replicated_not_uneven():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 2), ("tensor", 2)])
  specs = {"a": P("embed", "mlp"), "b": P("vocab", "embed"), "c": P()}
  shapes = {"a": jax.ShapeDtypeStruct((6, 3), jnp.float32),  # 3 % 2 != 0
            "b": jax.ShapeDtypeStruct((5, 4), jnp.float32),  # 5 % 2 != 0
            "c": jax.ShapeDtypeStruct((), jnp.float32)}
  out = sharding.logical_to_sharding(specs, shapes, mesh)
  assert out["a"].spec == P("fsdp", None)
  assert out["b"].spec == P(None, "fsdp")
  assert out["c"].spec == P()


def test_model_param_shardings_follow_rules():
  cfg = model_lib.model_config("tiny")
  abstract = jax.eval_shape(lambda r: model_lib.init_params(cfg, r),
                            jax.random.key(0))
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 2), ("tensor", 2)])
  sh = sharding.param_shardings(abstract, mesh)
  mlp = sh["img"]["block_0"]["mlp"]["fc1"]
  assert mlp["kernel"].spec == P("fsdp", "tensor")  # (embed, mlp)
  assert mlp["bias"].spec == P("tensor")
  q = sh["txt"]["layer_0"]["self_attn"]["query"]["kernel"]
  assert q.spec == P("fsdp", "tensor", None)  # (embed, heads, kv)
  assert sh["txt"]["word_embed"]["embedding"].spec == P("tensor", "fsdp")
  assert sh["temp"].spec == P()
  # Every sharded dim divides evenly.
  shapes = model_lib.unbox(abstract)
  for s, x in zip(jax.tree.leaves(sh), jax.tree.leaves(shapes)):
    for dim, axes in zip(x.shape, s.spec):
      if axes is not None:
        names = (axes,) if isinstance(axes, str) else axes
        assert dim % int(np.prod([mesh.shape[a] for a in names])) == 0


def test_global_batch_is_sharded_over_data_and_fsdp():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 2), ("tensor", 2)])
  local = {"ids": np.arange(8 * 3, dtype=np.int32).reshape(8, 3),
           "product_id": np.arange(8, dtype=np.int32)}
  g = sharding.global_batch(local, mesh)
  np.testing.assert_array_equal(np.asarray(g["ids"]), local["ids"])
  assert g["ids"].sharding.spec == P(("data", "fsdp"), None)
  # 4 batch shards of 2 rows, each replicated over "tensor".
  rows = sorted({tuple(np.asarray(s.data)[:, 0]) for s in
                 g["ids"].addressable_shards})
  assert rows == [(0, 3), (6, 9), (12, 15), (18, 21)]


def test_global_batch_rejects_indivisible_batch():
  mesh = sharding.make_mesh([("data", 8)])
  with pytest.raises(ValueError, match="not divisible"):
    sharding.global_batch({"ids": np.zeros((6, 2), np.int32)}, mesh)


def test_local_batch_size_checks_the_mesh_and_the_processes(monkeypatch):
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 2), ("tensor", 2)])
  assert sharding.local_batch_size(8, mesh) == 8  # One process: all rows.
  with pytest.raises(ValueError, match="data\\*fsdp mesh size 4"):
    sharding.local_batch_size(6, mesh)
  # As process 0 of 3: 12 rows divide the mesh's 4 and the 3 processes.
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  assert sharding.local_batch_size(12, mesh, "teacher batch") == 4
  with pytest.raises(ValueError, match="teacher batch 8 is not divisible by "
                     "the 3 processes"):
    sharding.local_batch_size(8, mesh, "teacher batch")


@pytest.mark.parametrize("lr_mults", [
    ((".*", 1.0),),
    # multi_transform: frozen img (no moments), txt at 0.1 (own inner state).
    (("img/.*", 0.0), ("txt/.*", 0.1), (".*", 1.0)),
], ids=["one_lr", "frozen_and_scaled"])
def test_state_is_born_sharded_and_adam_moments_follow_params(lr_mults):
  from dashclip_jax.train import optim
  from dashclip_jax.train import state as train_state
  from dashclip_jax.train import step_config
  cfg = model_lib.model_config("tiny")
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 2), ("tensor", 2)])
  abstract = model_lib.unbox(jax.eval_shape(
      lambda r: model_lib.init_params(cfg, r), jax.random.key(0)))
  tx = optim.make_optimizer(optim.OptimConfig(lr_mults=lr_mults), abstract)
  state = train_state.init_state(cfg, step_config.StepConfig(), tx,
                                 jax.random.key(0), mesh)
  name = lambda path: "/".join(str(k.key) for k in path
                               if isinstance(k, jax.tree_util.DictKey))
  param_sh = {name(p): x.sharding for p, x in
              jax.tree_util.tree_flatten_with_path(state.params)[0]}
  kernel = state.params["txt"]["layer_0"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.spec == P("fsdp", "tensor")
  # Every Adam mu/nu leaf has its param's layout (FSDP memory), found by
  # its trailing path; everything else in the state is replicated.
  moments = 0
  for path, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
    keys = name(path).split("/")
    owner = next((param_sh["/".join(keys[i:])] for i in range(len(keys))
                  if "/".join(keys[i:]) in param_sh), None)
    if owner is not None and x.ndim:
      moments += 1
      assert x.sharding.is_equivalent_to(owner, x.ndim), name(path)
    else:
      assert x.sharding.is_fully_replicated, name(path)
  ndim = {name(p): x.ndim for p, x in
          jax.tree_util.tree_flatten_with_path(state.params)[0]}
  trained = [n for n in param_sh if ndim[n] and not (
      lr_mults[0][1] == 0.0 and n.startswith("img/"))]
  # mu and nu of every trained non-scalar param (temp's are scalars).
  assert moments == 2 * len(trained)


def test_undivisible_dims_are_logged_once_per_param(caplog):
  # BERT's 30,524-token vocab over tensor=8: 30524 % 8 == 4.
  mesh = sharding.make_mesh([("tensor", 8)])
  specs = {"txt": {"word_embed": {"embedding": P("vocab", "embed")}},
           "mlp": {"kernel": P("embed", "mlp")}}
  shapes = {"txt": {"word_embed": {"embedding": jax.ShapeDtypeStruct(
      (30524, 16), jnp.float32)}},
            "mlp": {"kernel": jax.ShapeDtypeStruct((16, 64), jnp.float32)}}
  with caplog.at_level("INFO", logger="dashclip_jax"):
    out = sharding.logical_to_sharding(specs, shapes, mesh)
    sharding.logical_to_sharding(specs, shapes, mesh)  # E.g. a resume.
  assert out["txt"]["word_embed"]["embedding"].spec == P(None, "fsdp")
  assert out["mlp"]["kernel"].spec == P("fsdp", "tensor")
  lines = [r.getMessage() for r in caplog.records if "replicat" in
           r.getMessage()]
  assert len(lines) == 1, lines
  assert "txt/word_embed/embedding" in lines[0] and "(30524, 16)" in lines[0]
  assert "tensor=8" in lines[0]


def test_model_sets_no_activation_constraints_of_its_own(monkeypatch):
  # Flax's logical constraints are inert without active rules, and none are
  # active in the step: the step pins the batch dims itself
  # (train_steps._constrain_batch), so the model must not claim to.
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  calls = []
  monkeypatch.setattr(nn, "with_logical_constraint",
                      lambda x, *a, **k: calls.append(a) or x)
  cfg = model_lib.model_config("tiny")
  params = model_lib.unbox(model_lib.init_params(cfg, jax.random.key(0)))
  m = model_lib.DashClip(cfg)
  size = cfg.vision.image_size
  m.apply({"params": params}, jnp.zeros((2, size, size, 3)),
          method=model_lib.DashClip.encode_image)
  m.apply({"params": params}, jnp.ones((2, 8), jnp.int32),
          jnp.ones((2, 8), jnp.int32), method=model_lib.DashClip.encode_text)
  assert not calls
  assert "constrained" not in model_lib.__doc__
