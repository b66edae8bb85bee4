"""One job per workdir: a lock the kernel drops when its holder dies.

Two jobs writing one workdir race on its checkpoints (one of them dies in
Orbax's rename, or worse, both keep training and overwrite each other). An
entry point calls `hold(workdir)` at start; a second job on the same workdir
is refused in one line naming the first (pid and host).

The lock is `fcntl.flock` on `<workdir>/.dashclip.lock`, held for the life of
the process: the kernel releases it when the process ends, however it ends
(kill -9 included), so a stale lock never blocks a rerun. The file only
carries the holder's pid, host and start time for the message; its presence
means nothing.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket

import jax

from dashclip_jax.runtime import distributed as distributed_lib
from dashclip_jax.runtime.config_files import ConfigError

LOCK_FILE = ".dashclip.lock"

# path -> open file descriptor, kept open (and locked) until the process
# exits. A second hold of the same workdir in one process is a no-op.
_HELD: dict[str, int] = {}


class WorkdirBusyError(ConfigError):
  """Another live job holds the workdir's lock (printed as one line)."""


def holder(workdir: str) -> dict:
  """{"pid", "host", "started"} the lock holder wrote, or {} if unreadable."""
  try:
    with open(os.path.join(workdir, LOCK_FILE)) as f:
      return json.loads(f.read())
  except (OSError, ValueError):
    return {}


def hold(workdir: str, flag: str = "--workdir") -> None:
  """Locks `workdir` for this process's lifetime, or raises WorkdirBusyError.

  Entry points call it through hold_before_start / hold_after_initialize.
  """
  path = os.path.realpath(os.path.join(workdir, LOCK_FILE))
  if path in _HELD:
    return
  os.makedirs(workdir, exist_ok=True)
  # No O_TRUNC: a refused job must not wipe the holder's pid and host.
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    who = holder(workdir)
    running = (f"pid {who.get('pid', '?')} on host {who.get('host', '?')}, "
               f"started {who.get('started', '?')}") if who else "pid unknown"
    raise WorkdirBusyError(
        f"{flag}={workdir} is in use by another job ({running}); wait for "
        "it to end or stop it, or pick another workdir") from None
  me = {"pid": os.getpid(), "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
  _HELD[path] = fd


def hold_before_start(workdir: str,
                      distributed: distributed_lib.DistributedFlags,
                      flag: str = "--workdir") -> None:
  """A single-process job locks at start, before JAX starts: a refused job
  must not claim accelerator memory. (Multi-process: hold_after_initialize.)
  """
  if not distributed.several_processes():
    hold(workdir, flag)


def hold_after_initialize(workdir: str,
                          distributed: distributed_lib.DistributedFlags,
                          flag: str = "--workdir") -> None:
  """Process 0 of a multi-process job locks, once jax.distributed is up:
  the job's processes share the workdir."""
  if distributed.several_processes():
    if jax.process_index() == 0:
      hold(workdir, flag)
