"""The relevance question every LLM labeler asks, as text and as chat.

One wording for the in-process GPT labeler and for any OpenAI-compatible
endpoint: `relevance_prompt` fills the template (`gpt.prompts`'s
`DEFAULT_PROMPT`: a `{query}` and a `{product}` of one "field: value" line
per named field), `chat_messages` puts it after the system turn. The answer
asked for is one label token: "0" irrelevant, "1" moderately relevant,
"2" highly relevant (`LABEL_TOKENS`).
"""

from __future__ import annotations

from typing import Any, Sequence

from dashclip_jax.curation.gpt import prompts as gpt_prompts

LABEL_TOKENS = gpt_prompts.LABEL_TOKENS


def relevance_prompt(query: str, product_record: dict[str, Any],
                     fields: Sequence[str],
                     template: str = gpt_prompts.DEFAULT_PROMPT) -> str:
  """The question about one (query, product) pair, chat template aside."""
  return template.format(
      query=query, product=gpt_prompts.product_block(product_record, fields))


def chat_messages(query: str, product_record: dict[str, Any],
                  fields: Sequence[str],
                  template: str = gpt_prompts.DEFAULT_PROMPT,
                  system: str = gpt_prompts.DEFAULT_SYSTEM
                  ) -> list[dict[str, str]]:
  """[system turn (none when `system` is ""), user turn]: the messages of
  a chat completion, as `gpt.prompts.Prompts.chat` renders them."""
  user = {"role": "user",
          "content": relevance_prompt(query, product_record, fields,
                                      template)}
  return ([{"role": "system", "content": system}] if system else []) + [user]
