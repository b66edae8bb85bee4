"""SIGTERM (the pre-emption notice): save a checkpoint after the step, stop.

In the final evaluation there is nothing to save (the trained models are on
disk and a rerun redoes only the evaluation), so there SIGTERM stops the job
at once (`stop_at_once_on_sigterm`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger("dashclip_jax")


class Preempted(SystemExit):
  """SIGTERM arrived: a checkpoint was saved and the run stopped early."""


_SIGTERM_RECEIVED = threading.Event()


def install_sigterm_handler() -> None:
  """From now on SIGTERM only sets a flag that the training loop polls: it
  saves a checkpoint and exits. Idempotent."""
  def handler(signum, frame):  # pylint: disable=unused-argument
    log.warning("SIGTERM: saving a checkpoint after this step and exiting")
    _SIGTERM_RECEIVED.set()
  try:
    signal.signal(signal.SIGTERM, handler)
  except ValueError:  # Not the main thread (e.g. some test runners).
    log.warning("not the main thread: SIGTERM will not save a checkpoint")


@contextlib.contextmanager
def stop_at_once_on_sigterm(what: str) -> Iterator[None]:
  """Inside, SIGTERM raises Preempted at once (the job exits 143): for work
  that saves nothing a rerun would not redo, e.g. `what`="the final
  evaluation". A SIGTERM that came earlier (during the last training step)
  stops it before it starts. The previous handler is back on exit.

  (It was ignored there: the trainers' handler only sets the flag their loop
  polls, so the evaluation ran on ~70 s and the job exited 0.)
  """
  message = (f"SIGTERM during {what}: stopped at once; the trained models "
             f"are saved, a rerun redoes only {what}")
  if _SIGTERM_RECEIVED.is_set():
    raise Preempted(message)

  def handler(signum, frame):  # pylint: disable=unused-argument
    _SIGTERM_RECEIVED.set()
    raise Preempted(message)
  try:
    previous = signal.signal(signal.SIGTERM, handler)
  except ValueError:  # Not the main thread: SIGTERM keeps its handler.
    previous = None
  try:
    yield
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)


def preemption_requested(sync_point: bool) -> bool:
  """Asked once per step; True: save and stop after this step.

  One process answers from its own flag every step. Several processes agree
  (any signalled -> all stop after the same step, so none waits in a
  collective of a step the others skipped), but only at `sync_point` steps:
  the agreement is a host round trip that would otherwise stall the
  asynchronous dispatch of every step.
  """
  requested = _SIGTERM_RECEIVED.is_set()
  if jax.process_count() == 1:
    return requested
  if not sync_point:
    return False
  flags = multihost_utils.process_allgather(np.asarray(requested, np.int32))
  return bool(np.any(flags))
