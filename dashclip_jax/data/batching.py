"""Batches of good examples: bad ones are dropped and counted, checkpointably.

Example transforms (`examples.py`) return `{BAD_KEY: reason, BAD_WHERE_KEY:
culprit}` instead of data when a record is bad (e.g. its image does not
decode). `BatchSkippingBad` drops those, counts them in a `BadRecords`
(judging `max_bad_fraction` as it goes and at the end of the data), stacks
`batch_size` good examples into a dict of numpy arrays and normalises the
uint8 images (workers ship uint8: 4x less traffic). Its iterator's
`get_state()` / `set_state()` include the counts, so a resumed run keeps
counting where it stopped.
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

from dashclip_jax.data import bad_records as br
from dashclip_jax.model import preprocess

# Keys an example dict carries instead of data when its record was bad:
# what failed, and the culprit ("styles.csv line 17 (product 1865)").
BAD_KEY = "__bad__"
BAD_WHERE_KEY = "__bad_where__"
# Train pipelines judge max_bad_fraction from this many images on (config:
# data.min_seen_for_bad_fraction); the end of the data is always judged.
MIN_SEEN = 50


def stack(examples: Sequence[dict]) -> dict:
  """List of example dicts -> dict of arrays with a leading batch axis."""
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class _BatchSkippingBadIterator(grain.DatasetIterator):
  """Drops + counts bad examples, stacks good ones into batches."""

  def __init__(self, parent, batch_size: int, bad: br.BadRecords):
    super().__init__(parent)
    self._batch_size = batch_size
    self.bad = bad

  def __next__(self) -> dict:
    examples = []
    while len(examples) < self._batch_size:
      try:
        example = next(self._parent)
      except StopIteration:
        self.bad.check()  # End of data: final verdict on the bad fraction.
        raise
      if BAD_KEY in example:
        self.bad.bad(example.get(BAD_WHERE_KEY, "?"), "bad image",
                     example[BAD_KEY])
      else:
        self.bad.ok()
        examples.append(example)
      # Judged on the images seen so far, from bad.min_seen of them on.
      self.bad.judge()
    batch = stack(examples)
    if "image" in batch:
      batch["image"] = preprocess.normalize(batch["image"])  # uint8 -> f32.
    return batch

  def get_state(self) -> dict:
    return {"parent": self._parent.get_state(), "bad": self.bad.get_state()}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self.bad.set_state(state["bad"])


class BatchSkippingBad(grain.IterDataset):
  """IterDataset of batches of good examples (drop_remainder at the end)."""

  def __init__(self, parent: grain.IterDataset, batch_size: int, name: str,
               max_bad_fraction: float, min_seen: int = MIN_SEEN):
    super().__init__(parent)
    self._batch_size = batch_size
    self._name = name
    self._max_bad_fraction = max_bad_fraction
    self._min_seen = min_seen

  def __iter__(self) -> _BatchSkippingBadIterator:
    bad = br.BadRecords(self._name, max_bad_fraction=self._max_bad_fraction,
                        min_seen=self._min_seen)
    return _BatchSkippingBadIterator(self._parent.__iter__(), self._batch_size,
                                     bad)

  def __str__(self) -> str:
    return f"BatchSkippingBad(batch_size={self._batch_size})"
