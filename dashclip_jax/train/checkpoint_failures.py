"""What goes wrong around training checkpoints, and how it is said once.

A full disk (`is_disk_full`: ENOSPC anywhere in an error's chain, or
TensorStore's text for it) and Orbax's writer threads, which log each
failed write with its traceback; a failed restore's aborted reads, which
report through sys.unraisablehook and asyncio long after the restore; and a
checkpoint whose arrays do not fit the target state (`shape_mismatch`).
`checkpoints.TrainCheckpoints` raises the one-line errors; these keep the
rest quiet.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

import jax


def _chain(error: BaseException | None) -> list[BaseException]:
  out = []
  while error is not None and error not in out:
    out.append(error)
    error = error.__cause__ or error.__context__
  return out


# TensorStore reports ENOSPC as text: 'RESOURCE_EXHAUSTED: Error writing
# ...: No space left on device [os_error_code='28']'. RESOURCE_EXHAUSTED
# alone is no sign: XLA's out-of-memory says it too.
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")


def is_disk_full(error: BaseException | None) -> bool:
  """ENOSPC/EDQUOT anywhere in the chain, or TensorStore's text for it."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(t in str(e) for t in _DISK_FULL_TEXT):
      return True
  return False


def dir_size(path: str) -> int:
  """Bytes of the files under `path`."""
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files)


def mb(n: int) -> str:
  return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n / 2**10:,.0f} KB"


class DropDiskFullTracebacks(logging.Filter):
  """Orbax's writer threads log each failed write of a full disk with its
  traceback (hundreds of lines); DiskFullError says it once."""

  def filter(self, record: logging.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    exc = record.exc_info[1] if record.exc_info else None
    return not (is_disk_full(exc) or is_disk_full(
        RuntimeError(record.getMessage())))


DISK_FULL_FILTER = DropDiskFullTracebacks()


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(
      k, "idx", k)))) for k in path)


def shapes(tree) -> dict[str, tuple[int, ...]]:
  """{"params/img/...": shape} of a state or of its Orbax tree metadata."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_name(p): tuple(x.shape) for p, x in leaves}


def shape_mismatch(saved: dict[str, tuple], here: dict[str, tuple]) -> str:
  """What differs between two {path: shape} maps, briefly ("" if nothing)."""
  def tops(paths):
    return ", ".join(sorted({p.split("/")[0] for p in paths}))
  only_here = [p for p in here if p not in saved]
  only_saved = [p for p in saved if p not in here]
  reshaped = sorted(p for p in here if p in saved and here[p] != saved[p])
  parts = []
  if only_here:
    parts.append(f"{tops(only_here)}: {len(only_here)} arrays only in this "
                 "config")
  if only_saved:
    parts.append(f"{tops(only_saved)}: {len(only_saved)} arrays only in the "
                 "checkpoint")
  if reshaped:
    p = reshaped[0]
    more = f" (+{len(reshaped) - 1} more)" if len(reshaped) > 1 else ""
    parts.append(f"{p} {saved[p]} in the checkpoint, {here[p]} here{more}")
  return "; ".join(parts)


def _through_orbax(tb) -> bool:
  while tb is not None:
    if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return False


def _from_orbax_read(unraisable) -> bool:
  """Whether an unraisable report is an aborted Orbax read of a restore."""
  exc = unraisable.exc_value
  if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
    return True
  return _through_orbax(unraisable.exc_traceback)


class DropOrbaxReads(logging.Filter):
  """asyncio's "exception was never retrieved" records of aborted reads."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and _through_orbax(exc.__traceback__))


ASYNCIO_FILTER = DropOrbaxReads()


def quiet_aborted_reads():
  """Drops the reports of a failed restore's aborted reads; -> the previous
  sys.unraisablehook (put it back if the restore worked).

  Orbax stops its event loop at the first error; each read still in flight
  then reports (to the closed loop, or as its own failed coroutine) as a
  traceback, hundreds for a train state, through sys.unraisablehook during
  and after the restore. The warning that the checkpoint is unreadable
  already says what failed; every other report is kept.
  """
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _from_orbax_read(unraisable):
      previous(unraisable)
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(ASYNCIO_FILTER)  # Idempotent.
  return previous


def first_line(error: BaseException) -> str:
  """An Orbax read error without its TensorStore spec dump, briefly."""
  text = (str(error).splitlines() or [""])[0]
  return text.split(" See full TensorStore details")[0][:200]
