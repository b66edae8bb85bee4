"""The Flax Llama against transformers' LlamaForCausalLM, same weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpt_helpers

from dashclip_jax.curation.labelers.gpt import gguf_loader
from dashclip_jax.curation.labelers.gpt import model as model_lib

torch = pytest.importorskip("torch")


def _ours(config, hf):
  tensors = gguf_loader.hf_to_gguf_tensors(gpt_helpers.hf_state(hf), config)
  params, unused, unfilled = gguf_loader.params_from_tensors(tensors, config)
  assert unused == [] and unfilled == []
  return params


def _batch(vocab, lengths, length, left, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, (len(lengths), length)).astype(np.int32)
  mask = np.zeros_like(ids)
  for i, n in enumerate(lengths):
    if left:
      mask[i, length - n:] = 1
    else:
      mask[i, :n] = 1
  return ids * mask + 2 * (1 - mask), mask  # Padding ids = eos.


@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_transformers_on_a_padded_batch(tie):
  config = model_lib.tiny_config(vocab_size=128, tie_embeddings=tie)
  hf = gpt_helpers.hf_llama(config, seed=1)
  params = _ours(config, hf)
  apply = jax.jit(lambda p, i, m: model_lib.Llama(config).apply(
      {"params": p}, i, m)[0])
  for left in (False, True):
    ids, mask = _batch(config.vocab_size, [11, 6, 1, 9], 11, left)
    ours = np.asarray(apply(params, ids, mask))
    # HF numbers positions by index, not by real tokens: give it ours.
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
      theirs = hf(input_ids=torch.from_numpy(ids.astype(np.int64)),
                  attention_mask=torch.from_numpy(mask.astype(np.int64)),
                  position_ids=torch.from_numpy(positions)).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-5,
                               rtol=1e-5)
    assert np.abs(theirs[real]).max() > 0.1  # Not trivially small.


def test_a_row_does_not_depend_on_its_padding():
  config = model_lib.tiny_config(vocab_size=64)
  params = nn.meta.unbox(model_lib.init_boxed(config, jax.random.key(0)))
  ids = np.arange(3, 10, dtype=np.int32)[None]
  module = model_lib.Llama(config)
  alone = module.apply({"params": params}, ids, np.ones_like(ids),
                       method=model_lib.Llama.next_token)
  padded = np.concatenate([np.full((1, 5), 2, np.int32), ids], 1)
  mask = (np.arange(12) >= 5).astype(np.int32)[None]
  got = module.apply({"params": params}, padded, mask,
                     method=model_lib.Llama.next_token)
  np.testing.assert_allclose(got, alone, atol=1e-5)
  # Only two label tokens' logits: the same numbers as the full row.
  two = module.apply({"params": params}, padded, mask, jnp.array([5, 9]),
                     method=model_lib.Llama.next_token)
  np.testing.assert_allclose(two, np.asarray(got)[:, [5, 9]], atol=1e-6)


def test_remat_and_bf16_options():
  config = model_lib.tiny_config(vocab_size=64)
  params = nn.meta.unbox(model_lib.init_boxed(config, jax.random.key(0)))
  ids = jnp.arange(16, dtype=jnp.int32).reshape(2, 8) + 3
  mask = jnp.ones_like(ids)

  def loss(c, p):
    return jnp.mean(model_lib.Llama(c).apply({"params": p}, ids, mask)[0]**2)
  want, want_grad = jax.value_and_grad(loss, 1)(config, params)
  remat = model_lib.tiny_config(vocab_size=64, remat=True)
  got, got_grad = jax.value_and_grad(loss, 1)(remat, params)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
  bf16 = model_lib.tiny_config(vocab_size=64, dtype="bfloat16")
  np.testing.assert_allclose(loss(bf16, params), want, rtol=5e-2)


def test_every_param_has_logical_axes():
  config = model_lib.tiny_config(vocab_size=64, tie_embeddings=False)
  boxed = model_lib.abstract_boxed(config)
  specs = jax.tree.leaves(nn.get_partition_spec(boxed),
                          is_leaf=lambda x: isinstance(x, jax.sharding.
                                                       PartitionSpec))
  shapes = jax.tree.leaves(nn.meta.unbox(boxed))
  assert len(specs) == len(shapes) == 12  # 7 kernels, 3 norms, embed, lm_head.
  for spec, shape in zip(specs, shapes):
    assert len(spec) == len(shape.shape) and all(a for a in spec)
