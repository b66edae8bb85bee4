"""What a converted checkpoint is checked on against HF's PyTorch BLIP
(tests/test_convert_parity.py, bench/parity.py): our model's outputs that
`BlipForImageTextRetrieval` also computes, and reference weights in which
every tensor counts."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from dashclip_jax import model as model_lib


def blip_outputs(module: model_lib.DashClip, params: dict, images: Any,
                 ids: Any, mask: Any, *, use_enc_token: bool = False
                 ) -> dict[str, jax.Array]:
  """Every output HF's BlipForImageTextRetrieval also gives, from ours.

  Args:
    module, params: our model and its {"params": ...} variables.
    images: float (B, H, W, 3), normalised.
    ids, mask: int (B, L).
    use_enc_token: False keeps [CLS] at position 0 of the image-grounded
      pass, as HF does; True puts BLIP's [ENC] there.

  Returns:
    image_emb, text_emb (B, E); text_hidden, multimodal_hidden (B, L, D);
    itm_logits (B, 2); vision_tokens (B, 1+N, Wv).
  """
  ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
  apply, m = module.apply, model_lib.DashClip
  image_emb, aux = apply(params, images, method=m.encode_image)
  text_emb, taux = apply(params, ids, mask, method=m.encode_text)
  multimodal, _ = apply(params, ids, mask, aux["tokens"], True, use_enc_token,
                        method=m.encode_multimodal)
  itm, _ = apply(params, ids, mask, aux["tokens"], True, use_enc_token,
                 method=m.itm_logits)
  return dict(image_emb=image_emb, text_emb=text_emb,
              text_hidden=taux["hidden"], multimodal_hidden=multimodal,
              itm_logits=itm, vision_tokens=aux["tokens"])


def randomise_norms_and_biases(hf_model: Any, scale: float = 0.1) -> None:
  """Adds scale * N(0, 1) (torch's global generator) to every LayerNorm
  tensor and bias of a torch model, in place.

  HF initialises LayerNorms to 1/0 and biases to 0; a conversion that maps
  or drops one of them wrongly would still match. Needs torch.
  """
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    for name, p in hf_model.named_parameters():
      if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
        p.add_(scale * torch.randn_like(p))
