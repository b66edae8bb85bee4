"""Evaluation: graded retrieval, baselines, probes, plots, export.

  metrics    Recall@K / NDCG@10 / MRR over graded labels, deterministic ties
  knn        exact top-k sharded over devices; ANN recall against it
  baselines  BM25 and MiniLM-L6 over titles
  probes     aisle-category and relevance probes (logistic regression)
  plots      t-SNE by category, cosine by relevance label (PNG)
  search     the CLI over an exported index (`dashclip_jax/index.py`)
  eval_data  what is ranked: the catalog split, graded queries, probe products
  report     metrics.json and report.md
  gallery    gallery.html / gallery.png: each system's top-k per query
  encoders   the Encoder protocol, model loading, product encoding loop
  pipeline   the evaluation itself (`evaluate`), run by the job and the
             trainers' final evaluation
  run        the job: python -m dashclip_jax.evaluation.run --config=...
  paraphrases  hand-written paraphrased queries over TRAIN products (CLI):
    paraphrase_queries (the queries), paraphrase_labels (their label rule)
"""
