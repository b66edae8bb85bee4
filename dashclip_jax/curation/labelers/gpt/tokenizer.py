"""The tokenizer a GGUF describes, built with the `tokenizers` library.

GGUF metadata carries a byte-level BPE as `tokenizer.ggml.tokens` (the
vocabulary in id order), `tokenizer.ggml.merges` ("a b" pairs in rank
order), `token_type` (3 = control, 4 = user-defined: matched whole, never
split) and `tokenizer.ggml.pre`, the pre-tokenizer's name, which we map to
the `tokenizers` pieces llama.cpp's regexes amount to:
  "gpt2"/"default"  GPT-2's split (`ByteLevel(use_regex=True)`);
  "smollm"          each digit alone, then GPT-2's split (SmolLM's own
                    tokenizer.json: `Digits(individual_digits=True)`).
The chat template (`tokenizer.chat_template`, Jinja) is rendered with
jinja2 as transformers renders it (sandboxed, trim_blocks, lstrip_blocks).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

CONTROL, USER_DEFINED = 3, 4
PRE_TOKENIZERS = ("gpt2", "default", "smollm")


@dataclasses.dataclass
class GptTokenizer:
  """A `tokenizers.Tokenizer` and the special ids and chat template."""
  tokenizer: tokenizers.Tokenizer
  bos_id: int | None
  eos_id: int
  pad_id: int
  chat_template: str | None = None

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size()

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text (special tokens in the text matched whole)."""
    return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=False)

  def token_id(self, text: str) -> int:
    """The id of a text that is exactly one token, else ValueError."""
    ids = self.encode([text])[0]
    if len(ids) != 1:
      raise ValueError(f"{text!r} is {len(ids)} tokens {ids}, not one")
    return ids[0]

  def apply_chat_template(self, messages: Sequence[dict[str, str]],
                          add_generation_prompt: bool = True) -> str:
    """The template's text for `messages` ({"role", "content"} dicts)."""
    if not self.chat_template:
      raise ValueError("this tokenizer has no chat template")
    token = lambda i: self.tokenizer.id_to_token(i) if i is not None else ""
    return _compiled(self.chat_template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt,
        bos_token=token(self.bos_id), eos_token=token(self.eos_id))


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
  """A chat template compiled once (labelling renders it per pair)."""
  try:
    # jinja2: optional (the [gpt] extra), for chat templates only.
    from jinja2 import sandbox  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("rendering a chat template needs jinja2: pip install "
                      "jinja2") from None
  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True,
                                              lstrip_blocks=True)
  return env.from_string(template)


def _pre_tokenizer(name: str):
  gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if name in ("gpt2", "default"):
    return gpt2
  if name == "smollm":
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), gpt2])
  raise ValueError(f"GGUF tokenizer.ggml.pre {name!r} is not supported "
                   f"(known: {', '.join(PRE_TOKENIZERS)})")


def from_metadata(meta: dict[str, Any]) -> GptTokenizer:
  """The tokenizer of a GGUF's metadata (`gguf_loader.read_metadata`)."""
  kind = meta.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"GGUF tokenizer.ggml.model {kind!r} is not a "
                     "byte-level BPE ('gpt2')")
  tokens = list(meta["tokenizer.ggml.tokens"])
  types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
  merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
  bpe = models.BPE({t: i for i, t in enumerate(tokens)}, merges,
                   fuse_unk=False, byte_fallback=False)
  tok = tokenizers.Tokenizer(bpe)
  tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre",
                                              "default"))
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([
      tokenizers.AddedToken(t, special=True, normalized=False)
      for t, kind in zip(tokens, types) if kind == CONTROL])
  tok.add_tokens([tokenizers.AddedToken(t, normalized=False)
                  for t, kind in zip(tokens, types) if kind == USER_DEFINED])
  eos = int(meta["tokenizer.ggml.eos_token_id"])
  bos = meta.get("tokenizer.ggml.bos_token_id")
  bos = None if bos is None else int(bos)
  if meta.get("tokenizer.ggml.add_bos_token", False) and bos is not None:
    tok.post_processor = processors.TemplateProcessing(
        single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A $B",
        special_tokens=[(tokens[bos], bos)])
  return GptTokenizer(
      tok, bos_id=bos, eos_id=eos,
      pad_id=int(meta.get("tokenizer.ggml.padding_token_id", eos)),
      chat_template=meta.get("tokenizer.chat_template"))
