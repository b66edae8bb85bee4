"""jax's persistent compilation cache in a job's workdir."""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger("dashclip_jax")

DIRNAME = "jax_cache"


def use_in_workdir(workdir: str) -> str | None:
  """Keeps compiled XLA programs in `<workdir>/jax_cache` (jax's persistent
  cache); returns the directory, None when it is off.

  A rerun (resume after a kill, the evaluation redone) and every later
  stage that compiles a program seen before load it instead of compiling
  it again (a train step of the demo compiles for about a minute on 2 CPU
  cores). The cache key is the program, the compile options, the devices
  and the jax version, so a stale entry is never used; an unreadable one
  is compiled afresh (jax warns). A JAX_COMPILATION_CACHE_DIR (and a
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS) the user set wins; a cache
  dir that cannot be written turns the cache off with one warning.
  Call it before the first compile.
  """
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  path = os.path.join(workdir, DIRNAME)
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test.{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    log.warning("compilation cache off: %s is not writable (%s)", path, e)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    # Evaluation encoders compile in well under jax's default 1 s threshold
    # on a fast host, yet add up across the stages and systems.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  return path
