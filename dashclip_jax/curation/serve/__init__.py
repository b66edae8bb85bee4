"""The OpenAI-compatible labeling server (`python -m
dashclip_jax.curation.serve`).

  loading     --model -> the GPT model, its params and tokenizer
  engine      next-token scoring: bucketed jitted forwards (`Engine`)
  protocol    the request schemas and what the server refuses
  generation  token by token generation; OpenAI's logprobs blocks
  endpoints   the FastAPI app
  __main__    the command line
"""
