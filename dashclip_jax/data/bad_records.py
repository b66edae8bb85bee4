"""Counted skips for bad input records.

Bad data never crashes an epoch and is never silent: every skipped record is
counted by reason, the first few culprits are kept by name (file and row), and
above `max_bad_fraction` of the records seen we stop with a `BadDataError`
whose message is the summary.
"""

from __future__ import annotations

import collections
import dataclasses
import threading

from absl import logging


class BadDataError(ValueError):
  """Too many bad records (the message lists counts and first culprits)."""


@dataclasses.dataclass
class BadRecords:
  """Counts skipped records of one source, naming the first few of each kind.

  Attributes:
    source: what is being read, e.g. "catalog /data/styles.csv".
    max_bad_fraction: above this fraction of bad records (out of `seen`),
      `check` raises. 0.0 means any bad record is an error.
    max_culprits: how many culprits of each reason to keep by name, so every
      kind of problem is named however many of another kind come first.
    min_seen: a stream judged while it is read (`judge`) is judged only from
      this many records on, so a few early bad records of a large source do
      not stop it on a tiny sample. The end of a source is always judged.
  """
  source: str
  max_bad_fraction: float = 0.01
  max_culprits: int = 3
  min_seen: int = 0
  seen: int = 0
  counts: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)
  culprits: list = dataclasses.field(default_factory=list)

  def __post_init__(self):
    self._lock = threading.Lock()

  # Locks do not pickle; worker processes get their own.
  def __getstate__(self):
    state = dict(self.__dict__)
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  @property
  def num_bad(self) -> int:
    return sum(self.counts.values())

  def ok(self, n: int = 1) -> None:
    """Records `n` good records."""
    with self._lock:
      self.seen += n

  def bad(self, where: str, reason: str, detail: str = "") -> None:
    """Records one skipped record.

    Args:
      where: the culprit, e.g. "styles.csv row 17" (file and row, or key).
      reason: short category used for counting, e.g. "missing image".
      detail: optional longer explanation for the culprit list.
    """
    with self._lock:
      self.seen += 1
      self.counts[reason] += 1
      if self.counts[reason] <= self.max_culprits:
        msg = f"{where}: {reason}" + (f" ({detail})" if detail else "")
        self.culprits.append(msg)

  def summary(self) -> str:
    """One-paragraph summary: totals, counts per reason, first culprits of
    each reason (in the order they were met)."""
    if not self.num_bad:
      return f"{self.source}: {self.seen} records, none bad."
    reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.counts.items()))
    first = "; ".join(self.culprits)
    return (f"{self.source}: skipped {self.num_bad} of {self.seen} records "
            f"({reasons}). First culprits: {first}")

  def too_many(self) -> bool:
    return self.num_bad > self.max_bad_fraction * max(self.seen, 1)

  def check(self) -> None:
    """Logs the summary if anything was skipped; raises above the limit."""
    if not self.num_bad:
      return
    if self.too_many():
      sample = (f" (judged from min_seen_for_bad_fraction={self.min_seen} "
                "records on)" if self.min_seen else "")
      raise BadDataError(
          f"{self.summary()}. That is more than max_bad_fraction="
          f"{self.max_bad_fraction} of the records{sample}; fix the data or "
          "raise the limit.")
    logging.warning("%s", self.summary())

  def judge(self) -> None:
    """Mid-stream verdict: raises above the limit once `min_seen` records
    were seen (no log line: the trainers report counts at log steps)."""
    if self.seen >= self.min_seen and self.num_bad and self.too_many():
      self.check()

  # Iterator state (JSON-friendly) so that counts survive a checkpoint.
  def get_state(self) -> dict:
    return {"seen": self.seen, "counts": dict(self.counts),
            "culprits": list(self.culprits)}

  def set_state(self, state: dict) -> None:
    with self._lock:
      self.seen = int(state["seen"])
      self.counts = collections.Counter(
          {k: int(v) for k, v in state["counts"].items()})
      self.culprits = list(state["culprits"])
