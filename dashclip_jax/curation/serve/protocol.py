"""The labeling server's requests: OpenAI's chat and completion schemas,
what this server refuses (stream, n > 1, stop, another model), and the
prompt text, checked against the context before it is tokenized."""

from __future__ import annotations

from typing import Any, Literal

import pydantic

from dashclip_jax.serving.openai_http import RequestError

MAX_TOP_LOGPROBS = 20
DEFAULT_MAX_TOKENS = 16


class _Base(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="ignore")
  model: str
  temperature: float = pydantic.Field(1.0, ge=0.0, le=2.0)
  top_p: float = pydantic.Field(1.0, gt=0.0, le=1.0)
  n: int = 1
  stream: bool = False
  seed: int | None = None
  stop: str | list[str] | None = None


class Message(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="ignore")
  role: Literal["system", "developer", "user", "assistant"]
  content: str | list[dict[str, Any]]


class ChatRequest(_Base):
  messages: list[Message] = pydantic.Field(min_length=1)
  max_tokens: int | None = pydantic.Field(None, ge=1)
  max_completion_tokens: int | None = pydantic.Field(None, ge=1)
  logprobs: bool = False
  top_logprobs: int | None = pydantic.Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionRequest(_Base):
  prompt: str | list[str]
  max_tokens: int = pydantic.Field(DEFAULT_MAX_TOKENS, ge=1)
  logprobs: int | None = pydantic.Field(None, ge=0, le=MAX_TOP_LOGPROBS)
  echo: bool = False


def check_common(body: Any, served: str) -> None:
  """RequestError for what no endpoint here supports, or another model."""
  if body.model != served:
    raise RequestError(f"The model {body.model!r} does not exist; this "
                       f"server serves {served!r}", "model", 404,
                       "model_not_found")
  for name, bad in (("stream", body.stream), ("n", body.n != 1),
                    ("stop", body.stop is not None)):
    if bad:
      raise RequestError(f"{name}={getattr(body, name)!r} is not supported "
                         "by this server", name)


def message_text(content: str | list[dict[str, Any]]) -> str:
  """A message's text: a string, or its text parts joined."""
  if isinstance(content, str):
    return content
  parts = []
  for part in content:
    if part.get("type") != "text" or not isinstance(part.get("text"), str):
      raise RequestError(f"content part of type {part.get('type')!r} is not "
                         "supported (text only)", "messages")
    parts.append(part["text"])
  return "".join(parts)


def chat_prompt(tokenizer: Any, messages: list[Any]) -> str:
  """The model's chat template over the messages, assistant turn opened."""
  if not tokenizer.chat_template:
    raise RequestError("this model has no chat template: use "
                       "/v1/completions", "messages")
  return tokenizer.apply_chat_template(
      [{"role": "system" if m.role == "developer" else m.role,
        "content": message_text(m.content)} for m in messages],
      add_generation_prompt=True)


def longest_token_bytes(tokenizer: Any) -> int | None:
  """At least the bytes any one token covers: the UTF-8 length of the
  vocabulary's longest token text (byte-level BPE spells each byte as one
  char of 1-2 UTF-8 bytes); None for a tokenizer without a vocabulary."""
  vocab = getattr(getattr(tokenizer, "tokenizer", None), "get_vocab", None)
  if vocab is None:
    return None
  return max(len(t.encode("utf-8")) for t in vocab(with_added_tokens=True))


def check_fits_untokenized(prompt: str, max_tokens: int, max_length: int,
                           longest: int | None) -> None:
  """RequestError when the prompt cannot fit the context whatever its
  tokens: it has at least ceil(bytes / longest token) of them. Cheap, so
  a huge prompt is refused before the tokenizer spends seconds on it."""
  if longest is None:
    return
  least = -(-len(prompt.encode("utf-8", "replace")) // longest)
  if least + max_tokens > max_length:
    raise RequestError(
        f"the prompt (at least {least} tokens) plus max_tokens "
        f"({max_tokens}) exceeds this server's context of {max_length} "
        "tokens", "max_tokens", code="context_length_exceeded")
