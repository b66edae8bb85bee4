"""OUT/product_proj.safetensors and OUT/product_embedding.py: the product
embedding, which transformers has no class for (torch_product.py runs it on
the exported BLIP model)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from dashclip_jax import model as model_lib
from dashclip_jax.export_hf import torch_product

MODULE_FILE = "product_embedding.py"


def write_product(out_dir: str, config: model_lib.ModelConfig, params: dict
                  ) -> dict[str, Any]:
  """-> the product part of the export report."""
  kernel = np.asarray(params["product_proj"]["kernel"], np.float32)
  bias = np.asarray(params["product_proj"]["bias"], np.float32)
  proj_file = os.path.join(out_dir, torch_product.PROJ_FILE)
  # torch.nn.Linear layout: weight (out, in).
  save_file({"weight": np.ascontiguousarray(kernel.T), "bias": bias},
            proj_file, metadata={"format": "pt",
                                 "pooling": config.product_pooling})
  shutil.copyfile(torch_product.__file__, os.path.join(out_dir, MODULE_FILE))
  return dict(files=[torch_product.PROJ_FILE, MODULE_FILE],
              pooling=config.product_pooling,
              projection=f"{kernel.shape[0]} -> {kernel.shape[1]}")
