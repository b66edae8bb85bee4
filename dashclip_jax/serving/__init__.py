"""Serving the model to other programs over HTTP (`python -m
dashclip_jax.serving`; the labeling server `curation/serve` shares the
first two).

  batching     dynamic batching: concurrent requests' rows -> one call
  openai_http  OpenAI-style errors, the body limit, bearer auth
  engine       the query, text and product towers behind batchers
  search       the attached export: search with filters; the image root
  metrics      Prometheus counters and histograms
  page         the search page (GET /)
  endpoints    the FastAPI app: the endpoints
  server       the app for a model dir (and an export, an image root)
  __main__     the command line
"""
