"""host_memory.reuse_freed_memory: XLA's CPU temporaries stop page-faulting.

Each case runs in a fresh process: the setting is process-wide and must come
before numpy or jax is imported.
"""

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt settings are glibc's")

# A jitted call whose 64 MiB temporary (tanh(x), the dot's operand) is
# allocated and freed on every call; prints the page faults of each call.
_SCRIPT = """
import json, resource, sys
from dashclip_jax.runtime import host_memory
if sys.argv[1] == "reuse":
  assert host_memory.reuse_freed_memory()
import jax, jax.numpy as jnp
x = jnp.ones((4096, 4096), jnp.float32)
v = jnp.ones((4096, 8), jnp.float32)
f = jax.jit(lambda x, v: jnp.tanh(x * 2.0) @ v)
faults = []
for _ in range(40):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(f(x, v))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""
_BLOCK_PAGES = 64 * 2**20 // 4096


def _faults_per_call(mode: str) -> list[int]:
  out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], check=True,
                       capture_output=True, text=True,
                       env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  return json.loads(out.stdout.strip().splitlines()[-1])


def _calls_faulting_a_block(faults: list[int]) -> int:
  return sum(f >= 0.9 * _BLOCK_PAGES for f in faults)


def test_freed_temporaries_are_reused_not_faulted_in_again():
  # The first 10 calls warm up.
  default = _faults_per_call("default")[10:]
  reused = _faults_per_call("reuse")[10:]
  # glibc's default: the block is mmapped and unmapped on every call.
  assert _calls_faulting_a_block(default) == len(default), default
  # Kept: the heap still grows now and then (a call's temporary can be
  # allocated before the last one is freed), 0 to 5 calls of 30 here.
  assert _calls_faulting_a_block(reused) < len(reused) // 2, reused


# Runs an entry module as `python -m` does, with reuse_freed_memory replaced
# by a spy that prints which of numpy and jax were imported when it ran.
_ENTRY_SCRIPT = """
import runpy, sys
from dashclip_jax.runtime import host_memory
def spy():
  print(sorted(m for m in ("numpy", "jax") if m in sys.modules), flush=True)
host_memory.reuse_freed_memory_unless_disabled = spy
sys.argv = [sys.argv[1]]
try:
  runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit:
  pass
"""


@pytest.mark.parametrize("module", ["dashclip_jax.main",
                                    "dashclip_jax.curation.main"])
def test_entry_points_set_the_allocator_before_numpy_or_jax_start(module):
  # Threads that numpy or jax start before the setting keep arenas of their
  # own, and XLA's temporaries from those are mmapped again.
  out = subprocess.run([sys.executable, "-c", _ENTRY_SCRIPT, module],
                       check=True, capture_output=True, text=True)
  assert out.stdout.splitlines()[0] == "[]", out.stdout + out.stderr
