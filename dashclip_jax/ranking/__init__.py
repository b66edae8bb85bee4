"""Downstream ranking: DCN-V2 click models with and without an embedding
tower, trained and judged (AUC, next week) on simulated search sessions.

  catalog_data  the catalog split, its queries and true labels, attributes
  users, click_model, retriever, simulator, cache   the session simulator
  features      sessions -> one row per impression
  embeddings    an export's tables by product id / query; MiniLM and model
                towers written in the export layout
  models, train DCN-V2 (+ tower, + single-tower ablation); the mesh step
  metrics, evaluate, report   AUC, bootstrap over users, paired test
  pipeline, main, export_baseline   the job and its entry points
"""
