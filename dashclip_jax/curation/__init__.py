r"""Relevance curation: seed labels -> a teacher -> an expanded label set.

  labeler        the Labeler interface: (queries, products) -> (B, 3) probs
  teacher        cross-encoder teachers (text; multimodal ITM), saved dirs
  teacher_inputs a pair's tokens and the product's pixels
  teacher_train  the sharded jit train step and loop on seed labels
  gpt/           the GPT labeler: a Llama LM from a GGUF (SmolLM2), LoRA
                 or full fine-tuning (`teacher.kind="gpt"`)
  seed           seed labels in: judged rows, query-disjoint splits, hash
  mining         KNN candidates for unlabelled queries; nearest queries per
                 product (mined negatives)
  labelling      sharded, resumable Parquet labelling; the expanded set
  agreement      kappa, confusion, precision/recall, ECE, threshold sweep
  report         report.md, metrics.json, reliability plots
  steps/         the job's steps, one module each (teacher, mine, label,
                 negatives, expand, report) and their shared context
  pipeline       runs the steps config.run names; main is the job:
                 python -m dashclip_jax.curation.main \
                     --config=configs/curate.py:tiny --workdir=DIR
"""
