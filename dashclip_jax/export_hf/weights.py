"""Our params -> PyTorch tensors, by running the converter's renaming tables
backwards.

`convert/rename.py` says, for each torch tensor name, which of our params it
fills and by which transform (a transpose, a reshape, one third of the fused
ViT qkv). Every transform there only moves elements, so none is rewritten
here: a transform applied to the torch tensor's element *indices*
(`np.arange(n).reshape(shape)`) gives, for each element of our param, the
flat torch position it came from, and scattering our param's values to
those positions rebuilds the torch tensor. The table, its regexes and its
transforms are used as they are (`rename.apply_table`); what is checked
here is that every element of every torch tensor gets exactly one value and
that every param of the exported parts is used.
"""

from __future__ import annotations

import math

from flax import traverse_util
import numpy as np

from dashclip_jax import model as model_lib
from dashclip_jax.convert import rename
from dashclip_jax.convert.errors import ConversionError
from dashclip_jax.export_hf.errors import ExportError

Path = tuple[str, ...]


def _name(path: Path) -> str:
  return "/".join(path)


def torch_tensors(shapes: dict[str, tuple[int, ...]], table: rename.Table,
                  params: dict, config: model_lib.ModelConfig, *,
                  exported: tuple[str, ...],
                  constants: dict[Path, float] | None = None
                  ) -> dict[str, np.ndarray]:
  """{torch name: float32 array} for every name in `shapes`.

  Args:
    shapes: the torch model's state-dict names and shapes.
    table: the converter's table for that layout (torch name -> our path).
    params: our param tree (numpy leaves).
    config: our model config (the transforms read tower geometry off it).
    exported: top-level param names that must all be used (e.g. "img").
    constants: targets outside our tree and the value their elements take
      (BERT's token-type table: ("token_type",) -> 0.0).
  """
  flat = {k: np.asarray(v, np.float32)
          for k, v in traverse_util.flatten_dict(params).items()}
  constants = constants or {}
  out, used = {}, set()
  for name, shape in shapes.items():
    size = math.prod(shape)
    index = np.arange(size, dtype=np.int64).reshape(shape)
    try:
      mapped, _, _ = rename.apply_table({name: index}, table, config)
    except ConversionError as e:
      raise ExportError(f"{name}: {e}") from None
    if not mapped:
      raise ExportError(f"no param of ours maps to the torch tensor {name} "
                        f"{tuple(shape)}")
    values = np.zeros(size, np.float32)
    hits = np.zeros(size, np.int64)
    for path, where in mapped.items():
      if path in constants:
        value = np.full(where.shape, constants[path], np.float32)
      elif path in flat:
        value = flat[path]
        used.add(path)
      else:
        raise ExportError(f"{name} maps to {_name(path)}, which this model "
                          "does not have")
      if value.shape != where.shape:
        raise ExportError(
            f"{_name(path)} has shape {value.shape} but {name} "
            f"{tuple(shape)} needs {where.shape} there")
      values[where.ravel()] = value.ravel()
      hits[where.ravel()] += 1
    if (hits != 1).any():
      raise ExportError(f"{name}: {(hits != 1).sum()} of {size} elements "
                        "are not filled exactly once by our params")
    out[name] = values.reshape(shape)
  unused = sorted(_name(p) for p in flat
                  if p[0] in exported and p not in used)
  if unused:
    raise ExportError(f"{len(unused)} params have no place in the torch "
                      f"model, first {unused[0]}")
  return out
