"""Tiny GPT fixtures: a byte-level BPE trained in-process, a random tiny HF
Llama, and a GGUF file of both (written with the `gguf` package), so the
GPT tests need neither the packaged SmolLM2 nor a network."""

from __future__ import annotations

import json
import os

import numpy as np

from dashclip_jax.curation.labelers.gpt import gguf_loader
from dashclip_jax.curation.labelers.gpt import model as model_lib

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# ChatML as SmolLM2's GGUF carries it.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] "
    "!= 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant."
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if "
    "add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = [
    "nike men blue running shoes", "red cotton kurta for women",
    "Query: black leather watch\nProduct:\ntitle: Titan Men Black Watch",
    "Answer 2 if the product is what the query asks for, 1 if it matches "
    "partly, 0 if it does not match. Answer with the digit only.",
    "You rate how well products match shopping search queries.",
    "category: Tshirts\nbaseColour: Blue\ngender: Men\nusage: Casual",
] * 4


def tiny_bpe(vocab_size: int = 320) -> tuple[list[str], list[str]]:
  """-> (tokens in id order, merges "a b"): a byte-level BPE whose first
  ids are SPECIALS."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(SPECIALS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  vocab = tok.get_vocab()
  tokens = sorted(vocab, key=vocab.get)
  merges = json.loads(tok.to_str())["model"]["merges"]
  return tokens, [m if isinstance(m, str) else " ".join(m) for m in merges]


def hf_llama(config: model_lib.LlamaConfig, seed: int = 0):
  """A random transformers LlamaForCausalLM of `config`'s geometry, with
  non-trivial norm scales."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=config.vocab_size, hidden_size=config.width,
      intermediate_size=config.mlp_dim, num_hidden_layers=config.depth,
      num_attention_heads=config.heads, num_key_value_heads=config.kv_heads,
      head_dim=config.head_dim, rope_theta=config.rope_theta,
      rms_norm_eps=config.norm_eps, max_position_embeddings=256,
      tie_word_embeddings=config.tie_embeddings, attention_bias=False,
      bos_token_id=1, eos_token_id=2, pad_token_id=2)).eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1 + 0.1 * torch.randn_like(p))
  return hf


def hf_state(hf) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}


# Which GGUF type each tensor is written in: every dequantizer is used.
def _qtype(name: str):
  import gguf  # pylint: disable=g-import-not-at-top
  t = gguf.GGMLQuantizationType
  if name == "token_embd.weight":
    return t.Q8_0
  if "attn_" in name and "norm" not in name:
    return t.Q4_1
  if "ffn_" in name and "norm" not in name:
    return t.F16
  return t.F32


def write_gguf(path: str, config: model_lib.LlamaConfig,
               tensors: dict[str, np.ndarray], tokens: list[str],
               merges: list[str], quantize: bool = True,
               chat_template: str | None = CHATML) -> str:
  """A llama GGUF of `tensors` (GGUF names, numpy (out, in) order)."""
  import gguf  # pylint: disable=g-import-not-at-top
  w = gguf.GGUFWriter(path, "llama")
  w.add_block_count(config.depth)
  w.add_context_length(256)
  w.add_embedding_length(config.width)
  w.add_feed_forward_length(config.mlp_dim)
  w.add_head_count(config.heads)
  w.add_head_count_kv(config.kv_heads)
  w.add_rope_freq_base(config.rope_theta)
  w.add_rope_dimension_count(config.head_dim)
  w.add_layer_norm_rms_eps(config.norm_eps)
  w.add_vocab_size(config.vocab_size)
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("smollm")
  w.add_token_list(tokens)
  w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
  w.add_token_merges(merges)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(2)
  w.add_add_bos_token(False)
  if chat_template:
    w.add_chat_template(chat_template)
  for name, array in tensors.items():
    array = np.ascontiguousarray(array, np.float32)
    qtype = _qtype(name) if quantize else gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.F16:
      w.add_tensor(name, array.astype(np.float16))
    elif qtype == gguf.GGMLQuantizationType.F32:
      w.add_tensor(name, array)
    else:
      w.add_tensor(name, gguf.quantize(array, qtype), raw_dtype=qtype)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def tiny_gguf(directory: str, seed: int = 0, quantize: bool = True,
              **overrides) -> tuple[str, model_lib.LlamaConfig, object]:
  """-> (path of a tiny llama GGUF, its config, the HF model it holds)."""
  tokens, merges = tiny_bpe()
  config = model_lib.tiny_config(vocab_size=len(tokens), **overrides)
  hf = hf_llama(config, seed)
  tensors = gguf_loader.hf_to_gguf_tensors(hf_state(hf), config)
  path = write_gguf(os.path.join(directory, "tiny.gguf"), config, tensors,
                    tokens, merges, quantize)
  return path, config, hf
