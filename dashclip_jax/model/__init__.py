"""BLIP encoders and DashCLIP heads in Flax Linen.

Towers (top-level param names are public API; regexes select them):
  img           ViT image encoder (pre-LN, final LN), BLIP_REFERENCE §1.1.
  txt           BERT "MED" text encoder (post-LN) with a cross-attention
                sublayer per layer: unimodal ([CLS], no cross-attention) or
                image-grounded ([ENC] + cross-attention to image tokens).
  query         text-only BERT query tower (DashCLIP), its own weights.
  vision_proj, text_proj, product_proj, query_proj   Dense -> E, L2-normalised.
  itm_head      Dense -> 2 on the image-grounded position-0 state (1 = match).
  temp          learned ITC temperature (BLIP init 0.07; clamped in the loss).

Every parameter carries logical axis names ("embed", "mlp", "heads", "kv",
"vocab", "pos", "proj") so `train/sharding.py` can map them onto a mesh. The model
sets no activation shardings of its own: the train steps pin the batch dims
of the towers' inputs and outputs to the mesh's batch axes
(`train/steps._constrain_batch`), and XLA propagates them in between.

Modules: config (dataclasses, named sizes), layers (shared layers and
functions), attention, vit (`img`), bert (`txt`, `query`), dashclip (the
whole model), params (init, shapes, logical axes).
"""

from dashclip_jax.model.attention import Attention
from dashclip_jax.model.attention import einsum_attention
from dashclip_jax.model.attention import FUSED_ATTENTION_MULTIPLE
from dashclip_jax.model.attention import fused_attention
from dashclip_jax.model.bert import TextEncoder
from dashclip_jax.model.bert import TextLayer
from dashclip_jax.model.config import ATTENTION_IMPLEMENTATIONS
from dashclip_jax.model.config import model_config
from dashclip_jax.model.config import ModelConfig
from dashclip_jax.model.config import TextConfig
from dashclip_jax.model.config import VisionConfig
from dashclip_jax.model.dashclip import DashClip
from dashclip_jax.model.layers import gelu
from dashclip_jax.model.layers import l2_normalize
from dashclip_jax.model.layers import masked_mean
from dashclip_jax.model.layers import pool
from dashclip_jax.model.layers import POOLINGS
from dashclip_jax.model.params import abstract_params
from dashclip_jax.model.params import init_params
from dashclip_jax.model.params import logical_axes
from dashclip_jax.model.params import unbox
from dashclip_jax.model.vit import interpolate_pos_embed
from dashclip_jax.model.vit import VisionTransformer
from dashclip_jax.model.vit import ViTBlock
