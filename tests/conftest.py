"""Test-wide setup: 8 fake CPU devices (mesh tests) and no hub access."""

import os
import tempfile

import pytest

# Must happen before jax is imported anywhere: the mesh tests need 8 devices,
# and everything else simply runs on device 0.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent XLA cache for the run, main jobs in subprocesses included:
# dozens of tests compile the same tiny programs (a tiny train step takes
# seconds to compile). The key is the program, options, devices and jax
# version, so a shared entry never changes a result.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"dashclip_jax_test_xla_cache_{os.getuid()}"))


@pytest.fixture(scope="session")
def tiny_hf_blip_config():
  """HF BlipConfig at the tiny model's geometry (2 layers, width 32, 32 px)."""
  transformers = pytest.importorskip("transformers")
  from dashclip_jax.model import tokenizer as tok  # pylint: disable=g-import-not-at-top
  return transformers.BlipConfig(
      vision_config=dict(hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2,
                         image_size=32, patch_size=8, layer_norm_eps=1e-6),
      text_config=dict(vocab_size=tok.VOCAB_SIZE, hidden_size=32,
                       intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=64,
                       encoder_hidden_size=32),
      image_text_hidden_size=16)
