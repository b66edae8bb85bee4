"""The relevance question every LLM labeler asks, as text and as chat.

One wording for the in-process GPT labeler and for any OpenAI-compatible
endpoint: `relevance_prompt` fills the template (`DEFAULT_PROMPT`: a
`{query}` and a `{product}` of one "field: value" line per named field),
`chat_messages` puts it after the system turn. The answer
asked for is one label token: "0" irrelevant, "1" moderately relevant,
"2" highly relevant (`LABEL_TOKENS`).
"""

from __future__ import annotations

import string
from typing import Any, Sequence

LABEL_TOKENS = ("0", "1", "2")
DEFAULT_SYSTEM = "You rate how well products match shopping search queries."
DEFAULT_PROMPT = (
    "Query: {query}\n"
    "Product:\n{product}\n"
    "Answer 2 if the product is what the query asks for, 1 if it matches "
    "partly, 0 if it does not match. Answer with the digit only.")


def check_template(template: str) -> None:
  """ValueError unless the template's fields are exactly query, product."""
  try:
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
  except ValueError as e:
    raise ValueError(f"prompt template: {e}") from None
  if names != {"query", "product"}:
    raise ValueError("prompt template must use {query} and {product} and "
                     f"nothing else; it uses {sorted(names)}")


def product_block(product: dict[str, Any], fields: Sequence[str]) -> str:
  """One "field: value" line per named field with a value."""
  return "\n".join(f"{f}: {str(product[f]).strip()}" for f in fields
                   if str(product.get(f, "") or "").strip())


def relevance_prompt(query: str, product_record: dict[str, Any],
                     fields: Sequence[str],
                     template: str = DEFAULT_PROMPT) -> str:
  """The question about one (query, product) pair, chat template aside."""
  return template.format(
      query=query, product=product_block(product_record, fields))


def chat_messages(query: str, product_record: dict[str, Any],
                  fields: Sequence[str],
                  template: str = DEFAULT_PROMPT,
                  system: str = DEFAULT_SYSTEM
                  ) -> list[dict[str, str]]:
  """[system turn (none when `system` is ""), user turn]: the messages of
  a chat completion, as `gpt.prompts.Prompts.chat` renders them."""
  user = {"role": "user",
          "content": relevance_prompt(query, product_record, fields,
                                      template)}
  return ([{"role": "system", "content": system}] if system else []) + [user]
