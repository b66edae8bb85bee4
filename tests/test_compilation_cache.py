"""The main job's persistent XLA cache (`runtime.compilation_cache`): it
lives in the workdir, a damaged or unwritable cache never changes a result
nor stops the job, and a JAX_COMPILATION_CACHE_DIR the user set wins.

Each case runs in a fresh subprocess: jax initialises its cache once per
process, and a test here must not leave pytest's own process caching.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Sets up the cache as the main job does, then prints the cache dir and a
# jitted result whose compile is cached (min compile time 0 below).
_SCRIPT = """
import logging, sys
import jax, jax.numpy as jnp, numpy as np
from dashclip_jax.runtime import compilation_cache
logging.basicConfig(level=logging.WARNING)
print("cache", compilation_cache.use_in_workdir(sys.argv[1]))
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=1))
x = np.arange(48 * 32, dtype=np.float32).reshape(48, 32) / 1000
print("result", np.asarray(f(x)).tobytes().hex())
"""


def _run(workdir, **env):
  clean = {k: v for k, v in os.environ.items()
           if not k.startswith("JAX_COMPILATION_CACHE")}
  out = subprocess.run(
      [sys.executable, "-c", _SCRIPT, str(workdir)], cwd=ROOT,
      env=dict(clean, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **env),
      capture_output=True, text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = dict(l.split(" ", 1) for l in out.stdout.splitlines()
               if l.startswith(("cache ", "result ")))
  return lines["cache"], lines["result"], out.stderr


def _expected():
  """The jitted function of _SCRIPT in numpy (close, not bitwise)."""
  x = np.arange(48 * 32, dtype=np.float32).reshape(48, 32) / 1000
  return np.tanh(x @ x.T).sum(axis=1)


def _values(result_hex):
  return np.frombuffer(bytes.fromhex(result_hex), np.float32)


def _entries(cache_dir):
  return sorted(p for p in pathlib.Path(cache_dir).glob("*-cache"))


def test_cache_in_the_workdir_and_damaged_entries_recompile(tmp_path):
  cache, first, _ = _run(tmp_path)
  assert cache == str(tmp_path / "jax_cache")
  np.testing.assert_allclose(_values(first), _expected(), rtol=1e-5)
  entries = _entries(cache)
  assert entries, "nothing was cached"
  # Reused as is: the same bits.
  assert _run(tmp_path)[1] == first
  # Every entry damaged (garbage, then truncated to nothing): each program
  # is compiled afresh, with the same bits, and the job goes on.
  for damage in (lambda p: p.write_bytes(os.urandom(100)),
                 lambda p: p.write_bytes(b"")):
    for p in entries:
      damage(p)
    _, result, stderr = _run(tmp_path)
    assert result == first
    assert "Error reading persistent compilation cache entry" in stderr


def test_unwritable_cache_dir_turns_the_cache_off(tmp_path):
  (tmp_path / "jax_cache").write_text("a file where the cache dir goes")
  cache, result, stderr = _run(tmp_path)
  assert cache == "None"
  np.testing.assert_allclose(_values(result), _expected(), rtol=1e-5)
  warnings = [l for l in stderr.splitlines() if "compilation cache" in l]
  assert len(warnings) == 1 and "not writable" in warnings[0], stderr


def test_the_users_cache_dir_wins(tmp_path):
  own = tmp_path / "own_cache"
  cache, _, _ = _run(tmp_path / "work", JAX_COMPILATION_CACHE_DIR=str(own))
  assert cache == str(own)
  assert _entries(own)
  assert not (tmp_path / "work" / "jax_cache").exists()
