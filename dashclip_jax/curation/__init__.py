r"""Relevance curation: seed labels -> a teacher -> an expanded label set.

  labelers/      the Labeler interface and its implementations:
                 cross_encoder/ (the trained teachers), gpt/ (a GGUF
                 decoder LM, LoRA or full fine-tuning), openai_client/
                 (any OpenAI-compatible endpoint), wording (the prompt)
  seed           seed labels in: judged rows, query-disjoint splits, hash
  mining         KNN candidates for unlabelled queries; nearest queries per
                 product (mined negatives)
  label_shards   sharded, resumable Parquet labelling; the expanded set
  agreement      kappa, confusion, precision/recall, ECE, threshold sweep
  report_writer  report.md, metrics.json, reliability plots
  steps/         the job's steps, one module each (teacher, mine, label,
                 negatives, expand, report) and their shared context
  pipeline       runs the steps config.run names; main is the job:
                 python -m dashclip_jax.curation.main \
                     --config=configs/curate.py:tiny --workdir=DIR
"""
