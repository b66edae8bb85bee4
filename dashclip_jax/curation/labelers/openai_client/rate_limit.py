"""Pacing requests to a paid or shared endpoint: a requests-per-second
limit, exponential backoff with jitter, and a request budget. All three
are thread-safe: the client's worker threads share one of each."""

from __future__ import annotations

import random
import threading
import time
from typing import Callable


class RateLimiter:
  """At most `rps` request starts per second, evenly spaced: each
  `acquire` takes the slot 1/rps after the previous one, so n requests
  span at least (n - 1) / rps seconds. rps <= 0: no limit."""

  def __init__(self, rps: float,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep):
    self.rps, self._clock, self._sleep = rps, clock, sleep
    self._next = float("-inf")
    self._lock = threading.Lock()

  def acquire(self) -> None:
    if self.rps <= 0:
      return
    with self._lock:
      now = self._clock()
      slot = max(now, self._next)
      self._next = slot + 1.0 / self.rps
    if slot > now:
      self._sleep(slot - now)


def backoff_delay(attempt: int, base_s: float, max_s: float,
                  rng: random.Random) -> float:
  """Seconds to wait before retry `attempt` (0 first): base * 2^attempt,
  capped at max_s, of which a random half is jitter (so clients that failed
  together do not retry together)."""
  d = min(max_s, base_s * 2.0 ** attempt)
  return d / 2 + rng.uniform(0.0, d / 2)


class RequestBudget:
  """At most `limit` requests (retries included); limit <= 0: unlimited."""

  def __init__(self, limit: int):
    self.limit, self.used = limit, 0
    self._lock = threading.Lock()

  def take(self) -> bool:
    """Spends one request -> True, or False when none is left."""
    with self._lock:
      if 0 < self.limit <= self.used:
        return False
      self.used += 1
      return True
