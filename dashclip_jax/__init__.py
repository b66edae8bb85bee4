"""dashclip_jax: DashCLIP-style product and query embeddings in JAX/Flax.

  import dashclip_jax
  model = dashclip_jax.load(checkpoint_dir)
  model.encode_product(images, titles); model.encode_query(texts)
"""

from dashclip_jax.inference import DashClipEncoder
from dashclip_jax.inference import load

__version__ = "0.1.0"
__all__ = ["DashClipEncoder", "load", "__version__"]
