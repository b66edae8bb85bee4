"""The labelers: (query, product) pairs -> (B, 3) label probabilities.

  interface       the Labeler protocol, NUM_LABELS and the product fields
  wording         the relevance question every LLM labeler asks
  cross_encoder/  the trained cross-encoder teachers (text; multimodal ITM)
  gpt/            an in-process GGUF decoder LM, zero-shot or fine-tuned
  openai_client/  any OpenAI-compatible endpoint as a labeler
"""
