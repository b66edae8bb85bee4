"""A disk cache of LLM answers, so a rerun never pays for a request twice.

An sqlite3 table (stdlib; several processes may share the file) maps the
sha256 of a request, the JSON of everything that changes the answer (api,
model, messages or prompt, max_tokens, temperature, logprobs settings,
seed), to the answer's JSON. Neither side holds the API key: it travels in
an HTTP header, never in the request body the key is made from.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from typing import Any, Iterable

# Bumped when what an answer means changes: older rows then miss.
KEY_VERSION = 1


def request_key(request: dict[str, Any]) -> str:
  """The cache key of a request: sha256 of its canonical JSON."""
  text = json.dumps({"v": KEY_VERSION, **request}, sort_keys=True,
                    ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


class AnswerCache:
  """key -> answer text, in an sqlite3 file (created with its directory)."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
      self._db = sqlite3.connect(path, timeout=60, check_same_thread=False)
      self._db.execute("CREATE TABLE IF NOT EXISTS answers "
                       "(key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
      self._db.commit()
    except sqlite3.DatabaseError as e:
      raise ValueError(f"answer cache {path}: {e}") from None
    self._lock = threading.Lock()

  def get(self, keys: Iterable[str]) -> dict[str, str]:
    """The cached answers among `keys`."""
    keys, out = list(dict.fromkeys(keys)), {}
    with self._lock:
      for i in range(0, len(keys), 500):  # sqlite's bound-variable limit.
        chunk = keys[i:i + 500]
        out.update(self._db.execute(
            "SELECT key, answer FROM answers WHERE key IN "
            f"({','.join('?' * len(chunk))})", chunk).fetchall())
    return out

  def put(self, key: str, answer: str) -> None:
    """Stores one answer, committed at once (a killed job keeps it)."""
    with self._lock:
      self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)",
                       (key, answer))
      self._db.commit()

  def close(self) -> None:
    with self._lock:
      self._db.close()
