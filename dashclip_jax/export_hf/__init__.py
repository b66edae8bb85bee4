"""Exports a dashclip model directory to Hugging Face / PyTorch.

  python -m dashclip_jax.export_hf --model=DIR --output=OUT [--overwrite]

writes
  OUT/blip/     BlipForImageTextRetrieval (ViT, text encoder with
                cross-attention, vision_proj, text_proj, itm_head) with its
                BlipProcessor (tokenizer with BLIP's caption cleaning, PIL
                image processor)
  OUT/query/    a sentence-transformers model: query tower, pooling,
                query_proj, normalisation
  OUT/product_proj.safetensors, OUT/product_embedding.py
                the product embedding on top of OUT/blip (torch only)
  OUT/README.md the model card; OUT/export_hf.json the export's report

One module per concept:
  checks         what HF can hold (refusals) and what it uses differently
  weights        our params -> torch tensors: the converter's tables backwards
  hf_tokenizer   our tokenizer + pre_caption as one HF tokenizer
  blip, query, product   the three parts
  torch_product  the shipped PyTorch product embedding (and ITM, text)
  card           README.md
  pipeline       `export(model_dir, output, overwrite)`: the steps in order
  cli            the command line
  roundtrip      an export side by side with dashclip_jax.load (bench, tests)
"""

from dashclip_jax.export_hf.cli import main
from dashclip_jax.export_hf.errors import ExportError
from dashclip_jax.export_hf.pipeline import export
