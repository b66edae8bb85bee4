"""Builders several test files share (`import helpers`: pytest puts tests/
on sys.path, next to conftest.py)."""

import dataclasses

import jax
import numpy as np
import optax

from dashclip_jax import model as model_lib
from dashclip_jax.train import sharding
from dashclip_jax.trainers import eval_inputs


def one_layer_tiny_config() -> model_lib.ModelConfig:
  """The "tiny" model cut to one layer per tower: the fastest to compile."""
  c = model_lib.model_config("tiny")
  return c.replace(vision=dataclasses.replace(c.vision, depth=1),
                   text=dataclasses.replace(c.text, depth=1),
                   query=dataclasses.replace(c.query, depth=1))


def save_one_layer_tiny_model(path) -> str:
  """Writes `one_layer_tiny_config` with params from key 3 as a model dir at
  `path` (what `dashclip_jax.load` reads); -> the path."""
  from dashclip_jax.model import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
  config = one_layer_tiny_config()
  model_dir_lib.save_model_dir(
      str(path), model_lib.init_params(config, jax.random.key(3)), config)
  return str(path)


def padded_title_ids(rng: np.random.Generator, b: int, length: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """ids int32 (b, length) in [1000, 2000) with [CLS] first, and their mask,
  0 on the even rows from position 5 on (those ids stay random): a batch of
  texts with real padding. Draws once from rng."""
  ids = rng.integers(1000, 2000, (b, length)).astype(np.int32)
  ids[:, 0] = 101
  mask = np.ones((b, length), np.int32)
  mask[::2, 5:] = 0
  return ids, mask


def two_query_heldout_eval(labels: np.ndarray,
                           product_names: list[str] | None = None):
  """A held-out stage-2 eval small enough to rank by hand.

  Two queries, q0 embedded along x and q1 along y, in a 2-d "tiny" model
  whose product_proj is the identity, so a product's embedding is its
  feature row normalised. labels int (2, P): -1 unjudged.

  Returns:
    (fns, params, data, mesh) for `stage2.evaluate(...,
    features=(features, ok))`, the features (P, 2) and ok (P,) being the
    caller's.
  """
  tiny = model_lib.model_config("tiny")
  cfg = tiny.replace(embed_dim=2, text=dataclasses.replace(tiny.text, width=2))
  params = {"product_proj": {"kernel": np.eye(2, dtype=np.float32),
                             "bias": np.zeros(2, np.float32)},
            "temp": np.float32(0.07)}

  def embed_queries(params, batch):
    del params
    return (batch["query_emb"], batch["query_index"], batch["valid"])

  data = eval_inputs.Stage2Eval(
      product_rows=np.arange(labels.shape[1]), product_batches=None,
      query_batches=[{"query_emb": np.eye(2, dtype=np.float32),
                      "query_index": np.array([0, 1], np.int32),
                      "valid": np.array([1, 1], np.int32)}],
      labels=labels, query_ids=["q0", "q1"], product_names=product_names)
  mesh = sharding.make_mesh([("data", 1), ("fsdp", 1), ("tensor", 1)],
                            devices=jax.devices()[:1])
  project = lambda p, f: model_lib.DashClip(cfg).apply(
      {"params": p}, f, method=model_lib.DashClip.project_product)
  fns = (None, jax.jit(embed_queries), jax.jit(project))
  return fns, params, data, mesh


def keeping_grads(tx: optax.GradientTransformation
                  ) -> optax.GradientTransformation:
  """`tx`, whose state also keeps the raw gradients of the latest step:
  `opt_state[0]` (params-shaped: `init` returns the params, so
  `sharding.optimizer_shardings` shards it like them). A test reads a
  trainer's own step's gradients from its state this way.

  Why: AdamW (and clipping) normalise a uniform gradient scale away, so
  params after a step hide e.g. a sum-instead-of-mean over the data axis;
  the gradients do not."""
  keep = optax.GradientTransformation(
      init=lambda params: params,
      update=lambda grads, state, params=None: (grads, grads))
  return optax.chain(keep, tx)


def assert_same_grads(got, want, rtol: float = 1e-5) -> None:
  """Gradient trees equal to rtol; entries near 0 (some leaves' gradients
  are 0 up to rounding, e.g. a bias a norm cancels) to rtol times the
  tree's largest entry. The gradients must not be all 0."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  got, want = jax.tree.leaves(got), jax.tree.leaves(want)
  largest = max(float(np.abs(w).max()) for w in want)
  assert largest > 0, "zero gradients"
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * largest)
