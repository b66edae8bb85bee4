"""JSON files that say which format wrote them (a prepared data directory's
manifest, a model directory's metadata): read, or fail in one line."""

from __future__ import annotations

import json
import os
from typing import Any


def read(directory: str, name: str, key: str, expected: Any,
         missing: str) -> dict[str, Any]:
  """<directory>/<name> as a dict whose `key` is `expected`.

  Raises FileNotFoundError("<directory>: no <name>; <missing>") if it is
  absent, ValueError naming the file and both values if `key` differs.
  """
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{directory}: no {name}; {missing}")
  with open(path) as f:
    data = json.load(f)
  if data.get(key) != expected:
    raise ValueError(f"{path}: {key} {data.get(key)!r}, expected "
                     f"{expected!r}")
  return data
