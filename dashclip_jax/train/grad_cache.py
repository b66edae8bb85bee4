"""GradCache: gradient accumulation that keeps a contrastive loss whole-batch.

Plain accumulation over k microbatches would give each microbatch its own
loss, so in-batch contrastive terms would only see B/k candidates. GradCache
(Gao et al., 2021) splits the *encoders* instead of the loss:

  1. representations of all k microbatches, computed without grad, one
     microbatch alive at a time (`lax.map`), merged into the full batch;
  2. the loss on the full batch and its gradients w.r.t. the params (heads
     that run inside the loss) and w.r.t. the representations;
  3. per microbatch, a VJP of the encoders with those representation
     gradients as cotangents, summed (`lax.scan`).

The result equals one step on the whole batch, for one encoder forward more
than plain backprop. Losses whose own forward is heavy (stage 1's ITM
passes) sum it over chunks with `chunked_sum`, so the backward pass keeps
one chunk's activations alive.

Microbatch m takes rows m, m+k, m+2k, ...: a strided split keeps every
device's rows spread over all microbatches (a contiguous split would put
microbatch 0 on the first devices only). Microbatch m's rng is
`jax.random.split(rng, k)[m]`; with k = 1 the functions run once on the
whole batch with `rng` itself (`chunked_sum`: `split(rng, 1)[0]`).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, Array]


def split(tree: Any, k: int) -> Any:
  """(B, ...) leaves -> (k, B/k, ...): microbatch m is rows m, m+k, ..."""
  def f(x):
    if x.shape[0] % k:
      raise ValueError(f"batch {x.shape[0]} not divisible by accum_steps {k}")
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)  # (k, B/k, ...)
  return jax.tree.map(f, tree)


def merge(tree: Any) -> Any:
  """Inverse of `split`: (k, B/k, ...) leaves -> (B, ...) in batch order."""
  def f(x):
    x = jnp.swapaxes(x, 0, 1)  # (B/k, k, ...)
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])
  return jax.tree.map(f, tree)


def map_microbatches(fn: Callable[[Any, Array], Any], batch: Any, rng: Array,
                     k: int) -> Any:
  """fn(microbatch, rng_m) over k microbatches, merged back to batch order.

  One microbatch's activations are alive at a time; call it on
  stop-gradient inputs (step 1 above, or features that need no grad).
  """
  if k == 1:
    return fn(batch, rng)
  return merge(jax.lax.map(lambda a: fn(a[0], a[1]),
                           (split(batch, k), jax.random.split(rng, k))))


def value_and_grad(
    encode: Callable[[Any, Any, Array], Any],
    loss_on_reps: Callable[[Any, Any], tuple[Array, Metrics]],
    params: Any, batch: Any, rng: Array, k: int,
) -> tuple[tuple[Array, Metrics], Any]:
  """d loss_on_reps(params, encode(params, batch)) / d params, k microbatches.

  Args:
    encode: (params, microbatch, rng) -> pytree of per-example reps (b, ...).
    loss_on_reps: (params, reps of the full batch) -> (loss, metrics).
    params, batch, rng: as for the step.
    k: number of microbatches; 1 is plain `jax.value_and_grad`.
  """
  if k == 1:
    def full(p):
      return loss_on_reps(p, encode(p, batch, rng))
    return jax.value_and_grad(full, has_aux=True)(params)

  p_sg = jax.lax.stop_gradient(params)
  reps = map_microbatches(lambda mb, r: encode(p_sg, mb, r), batch, rng, k)
  (loss, metrics), (g_p, g_reps) = jax.value_and_grad(
      loss_on_reps, argnums=(0, 1), has_aux=True)(params, reps)

  def body(acc, xs):
    mb, r, ct = xs
    _, vjp = jax.vjp(lambda p: encode(p, mb, r), params)
    (g,) = vjp(ct)
    return jax.tree.map(jnp.add, acc, g), None

  g_enc, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, g_p),
                          (split(batch, k), jax.random.split(rng, k),
                           split(g_reps, k)))
  return (loss, metrics), jax.tree.map(jnp.add, g_p, g_enc)


def chunked_sum(fn: Callable[[Any, Array], Array], xs: Any, rng: Array,
                k: int) -> Array:
  """sum_m fn(chunk m of xs, rng_m); one checkpointed chunk alive at a time.

  jax.checkpoint makes the backward pass recompute each chunk from its
  inputs instead of keeping every chunk's activations.
  """
  rngs = jax.random.split(rng, k)
  if k == 1:
    return fn(xs, rngs[0])
  body = jax.checkpoint(fn)
  def step(acc, x):
    return acc + body(*x), None
  chunks = split(xs, k)
  first = jax.eval_shape(fn, jax.tree.map(lambda a: a[0], chunks), rngs[0])
  total, _ = jax.lax.scan(step, jnp.zeros(first.shape, first.dtype),
                          (chunks, rngs))
  return total
