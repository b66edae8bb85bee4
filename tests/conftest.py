"""Test-wide setup: 8 fake CPU devices (mesh tests) and no hub access."""

import os

# Must happen before jax is imported anywhere: the mesh tests need 8 devices,
# and everything else simply runs on device 0.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
