"""Converts BLIP / Hugging Face PyTorch checkpoints into a dashclip model dir.

Layouts (detected from the tensor names):
  blip_original  BLIP's pretraining state dict (`model` key of the .pth):
                 visual_encoder, text_encoder, heads, temp; momentum copies and
                 queues are kept; the text decoder is ignored.
  hf_blip        HF BlipForImageTextRetrieval (or BlipModel) safetensors / dir.
  hf_bert        HF BertModel weights, into the text and/or query encoder.

One module per step, in the order they run:
  sources   .pth / .bin / safetensors / HF directory -> named tensors
  geometry  the target model config (config.json, shapes, `--set`)
  rename    per-layout tables: source names -> param paths and transforms
  fit       shape fitting (vocab resize, position-table interpolation)
  pipeline  the steps above -> param tree, report, model directory
  cli       `python -m dashclip_jax.convert --source=... --output=...`
Checking a conversion (not a step): `parity`, our outputs that HF's BLIP also
computes (the parity test and bench compare them).
"""

import logging

from dashclip_jax.convert.cli import main
from dashclip_jax.convert.cli import parse_bert_into
from dashclip_jax.convert.cli import parse_overrides
from dashclip_jax.convert.errors import ConversionError
from dashclip_jax.convert.errors import UsageError
from dashclip_jax.convert.geometry import apply_overrides
from dashclip_jax.convert.pipeline import ConversionReport
from dashclip_jax.convert.pipeline import convert
from dashclip_jax.convert.pipeline import convert_tensors
from dashclip_jax.convert.rename import detect_layout
from dashclip_jax.convert.sources import read_source

# Every module's logger is a child of this one: quieting it quiets them all.
log = logging.getLogger(__name__)
