"""dashclip_jax: DashCLIP-style product and query embeddings in JAX/Flax.

  import dashclip_jax
  model = dashclip_jax.load(checkpoint_dir)
  model.encode_product(images, titles); model.encode_query(texts)
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["DashClipEncoder", "load", "__version__"]


def __getattr__(name: str):
  # Imported on first use, so that `import dashclip_jax.<module>` starts no
  # numpy/jax threads: the main job sets up the allocator before any
  # (host_memory.reuse_freed_memory).
  if name in ("DashClipEncoder", "load"):
    from dashclip_jax import inference  # pylint: disable=g-import-not-at-top
    return getattr(inference, name)
  raise AttributeError(f"module 'dashclip_jax' has no attribute {name!r}")
