"""The labeler of any OpenAI-compatible endpoint (vLLM, llama.cpp, an API).

  labeler     OpenAICompatibleLabeler: a request per pair, cached, limited
  answers     an answer (logprobs or text) -> label probabilities
  cache       the sqlite cache of parsed answers
  rate_limit  requests per second, backoff, the request budget
"""
