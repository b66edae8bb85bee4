"""What HF's BLIP and BERT classes can hold of a model: refusals (one
`ExportError` naming the culprit) and notes (exported, but used differently
from HF's defaults).

Our attention allows heads that do not divide the width (head width
width // heads, the rest projected away); HF's BLIP and BERT attention
require heads * head_dim == width. HF's BLIP text encoder has a
cross-attention sublayer only in its decoder configuration, which ours must
have for ITM and the product embedding. Everything else in ModelConfig
(sizes, eps, vocab, positions, dropout) is a field of BlipConfig's
text_config / vision_config or BertConfig.

Poolings are not geometry and never refuse an export: HF's
`BlipForImageTextRetrieval(use_itm_head=False)` pools the text at [CLS],
so a model with text_pooling "mean" gets a note and `text_embedding` in
product_embedding.py pools it our way; product and query pooling are ours
to implement (product_embedding.py, the sentence-transformers Pooling).
"""

from __future__ import annotations

from typing import Any

from dashclip_jax import model as model_lib
from dashclip_jax.export_hf.errors import ExportError

SUPPORTED_RESIZE = "bicubic_square"


def check_exportable(config: model_lib.ModelConfig,
                     preprocessing: dict[str, Any]) -> list[str]:
  """Raises ExportError for what HF cannot hold; -> notes for the rest."""
  for name, tower in (("vision", config.vision), ("text", config.text),
                      ("query", config.query)):
    if tower.width % tower.heads:
      raise ExportError(
          f"{name} tower: width {tower.width} is not a multiple of its "
          f"{tower.heads} heads (head width {tower.width // tower.heads}); "
          "HF's BLIP/BERT attention needs heads * head width == width")
  if not config.text.cross_attention:
    raise ExportError(
        "text tower has no cross-attention (text.cross_attention=false): "
        "BlipForImageTextRetrieval's text encoder needs it for ITM")
  resize = preprocessing.get("resize", SUPPORTED_RESIZE)
  if resize != SUPPORTED_RESIZE:
    raise ExportError(f"preprocessing.resize {resize!r}: only "
                      f"{SUPPORTED_RESIZE!r} has a BlipImageProcessor "
                      "equivalent")
  notes = []
  if config.text_pooling == "mean":
    notes.append(
        "text_pooling is 'mean': BlipForImageTextRetrieval(use_itm_head="
        "False) pools [CLS], so its image-text similarity is not dashclip's;"
        " product_embedding.text_embedding pools the mean")
  if config.param_dtype != "float32":
    notes.append(f"params are {config.param_dtype}: exported as float32")
  return notes
