"""DashCLIP's product embedding in PyTorch, from a dashclip_jax.export_hf
export (shipped there as `product_embedding.py`; needs only torch,
transformers and safetensors).

The product embedding is BLIP's image-grounded text encoder run on the
product's image and title with [ENC] at position 0, pooled ([ENC] state,
or the masked mean over the title's positions: `pooling` in
product_proj.safetensors' metadata), projected by `product_proj` and
L2-normalised. transformers has no class for it; `ProductEmbedding` runs it
on the exported `BlipForImageTextRetrieval`.

  import transformers
  from product_embedding import ProductEmbedding
  embed = ProductEmbedding.from_export("OUT")   # OUT/blip + product_proj
  processor = transformers.BlipProcessor.from_pretrained("OUT/blip")
  batch = processor(images=images, text=titles, padding=True,
                    truncation=True, return_tensors="pt")
  with torch.no_grad():
    emb = embed(batch["pixel_values"], batch["input_ids"],
                batch["attention_mask"])          # (B, E), unit norm

Two more outputs whose DashCLIP definition HF's forward does not compute
as is: `itm_probability` (BLIP's ITM puts [ENC] at position 0; HF uses the
ids as given) and `text_embedding` (pools per the model's text_pooling;
HF's use_itm_head=False path always takes [CLS]). `image_embedding` is
vision_proj of the ViT's [CLS] state, normalised, as in HF.
"""

from __future__ import annotations

import os

from safetensors import safe_open
import torch
import torch.nn.functional as F
import transformers

PROJ_FILE = "product_proj.safetensors"
BLIP_DIR = "blip"
ENC_TOKEN_ID = 30523  # BLIP's [ENC]; also config.dashclip["enc_token_id"].


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str
         ) -> torch.Tensor:
  """(B, L, D) -> (B, D): position 0 ("cls"/"enc") or the masked mean."""
  if pooling in ("cls", "enc"):
    return hidden[:, 0]
  if pooling != "mean":
    raise ValueError(f"unknown pooling {pooling!r}: cls, enc or mean")
  mask = attention_mask[..., None].to(hidden.dtype)
  return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _dashclip(blip: transformers.BlipForImageTextRetrieval) -> dict:
  return getattr(blip.config, "dashclip", None) or {}


def _with_enc(input_ids: torch.Tensor, blip) -> torch.Tensor:
  ids = input_ids.clone()
  ids[:, 0] = _dashclip(blip).get("enc_token_id", ENC_TOKEN_ID)
  return ids


def grounded_states(blip: transformers.BlipForImageTextRetrieval,
                    pixel_values: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
  """(B, L, D) image-grounded text states, [ENC] at position 0."""
  image = blip.vision_model(pixel_values=pixel_values).last_hidden_state
  return blip.text_encoder(
      input_ids=_with_enc(input_ids, blip), attention_mask=attention_mask,
      encoder_hidden_states=image,
      encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long,
                                        device=image.device)
  ).last_hidden_state


class ProductEmbedding(torch.nn.Module):
  """(pixel_values, input_ids, attention_mask) -> (B, E) product embeddings."""

  def __init__(self, blip: transformers.BlipForImageTextRetrieval,
               product_proj: torch.nn.Linear, pooling: str):
    super().__init__()
    self.blip = blip
    self.product_proj = product_proj
    self.pooling = pooling

  @classmethod
  def from_export(cls, export_dir: str, **from_pretrained_kwargs
                  ) -> "ProductEmbedding":
    """Loads `export_dir`/blip and `export_dir`/product_proj.safetensors."""
    blip = transformers.BlipForImageTextRetrieval.from_pretrained(
        os.path.join(export_dir, BLIP_DIR), **from_pretrained_kwargs).eval()
    with safe_open(os.path.join(export_dir, PROJ_FILE), "pt") as f:
      weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
      pooling = f.metadata()["pooling"]
    proj = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
      proj.weight.copy_(weight)
      proj.bias.copy_(bias)
    return cls(blip, proj.to(blip.dtype), pooling).eval()

  def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
              attention_mask: torch.Tensor) -> torch.Tensor:
    hidden = grounded_states(self.blip, pixel_values, input_ids,
                             attention_mask)
    pooled = pool(hidden, attention_mask, self.pooling)
    return F.normalize(self.product_proj(pooled), dim=-1)


def image_embedding(blip: transformers.BlipForImageTextRetrieval,
                    pixel_values: torch.Tensor) -> torch.Tensor:
  """(B, E) image embeddings: vision_proj of the ViT's [CLS], normalised."""
  image = blip.vision_model(pixel_values=pixel_values).last_hidden_state
  return F.normalize(blip.vision_proj(image[:, 0]), dim=-1)


def text_embedding(blip: transformers.BlipForImageTextRetrieval,
                   input_ids: torch.Tensor, attention_mask: torch.Tensor
                   ) -> torch.Tensor:
  """(B, E) unimodal text embeddings, pooled per config.dashclip."""
  hidden = blip.text_encoder(input_ids=input_ids,
                             attention_mask=attention_mask).last_hidden_state
  pooled = pool(hidden, attention_mask,
                _dashclip(blip).get("text_pooling", "cls"))
  return F.normalize(blip.text_proj(pooled), dim=-1)


def itm_probability(blip: transformers.BlipForImageTextRetrieval,
                    pixel_values: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
  """(B,) probability that image b matches text b ([ENC] at position 0)."""
  logits = blip(input_ids=_with_enc(input_ids, blip),
                pixel_values=pixel_values, attention_mask=attention_mask,
                use_itm_head=True).itm_score
  return logits.softmax(-1)[:, 1]
