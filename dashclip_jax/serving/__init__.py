"""Serving the model to other programs over HTTP.

  batching     dynamic batching shared by the servers (asyncio -> one call)
  openai_http  OpenAI-style errors, the body limit, bearer auth
"""
