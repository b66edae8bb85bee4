r"""Starting a job, the same way for every entry point: flags, workdir,
logging, one-line errors, jax.distributed and config.json.

  def job(config, workdir: str) -> None: ...

  if __name__ == "__main__":
    app.run_job("dashclip_jax.curation.main", job,
                config_help="configs/curate.py[:variant].")

`run_job` defines --config (a configs/*.py file[:argument], with
--config.a.b=value overrides), --workdir and the multi-process flags, and
reports a bad flag or override in one line naming it
(`runtime/flag_errors.py`; an entry module checks --config and its
overrides with `flag_errors.exit_on_bad_config` before its heavy imports). Then, in order: it
starts logging; runs the job's cheap `check(config)`; checks that the
workdir can be written and locks it (before JAX starts a backend: a refused
job claims no accelerator memory); starts jax.distributed; turns on the
compilation cache where asked; writes <workdir>/config.json (process 0);
and calls `job(config, workdir)`. ConfigError and the `errors` a job names
end the program as `<prog>: error: <message>`, one line, no traceback.

The servers and the converters, which take no config, use the pieces:
`one_line_errors` and `start_logging`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Any, Callable, Iterator

from absl import app as absl_app
from absl import flags
import jax
from ml_collections import config_flags
import ml_collections

from dashclip_jax.runtime import compilation_cache
from dashclip_jax.runtime import distributed
from dashclip_jax.runtime import flag_errors
from dashclip_jax.runtime import run_info
from dashclip_jax.runtime import workdir_lock
from dashclip_jax.runtime.config_files import ConfigError

Job = Callable[[ml_collections.ConfigDict, str], Any]


def run_job(prog: str, job: Job, *, config_help: str,
            workdir_flag: str = "workdir",
            workdir_help: str = "Output directory (resumes).",
            check: Callable[[ml_collections.ConfigDict], None] | None = None,
            errors: tuple[type[BaseException], ...] = (),
            compilation_cache_in_workdir: bool = False,
            write_config_json: bool = True,
            flag_hint: Callable[[list[str]], str | None] | None = None
            ) -> None:
  """Runs `job(config, workdir)` as the program `prog` (see the module
  docstring). Call it from `if __name__ == "__main__"` only: it defines the
  job's flags and parses the command line.

  Args:
    prog: the program's name in its error lines (`dashclip_jax.main`).
    job: the job; what it prints is its own.
    config_help: --config's help (which configs/*.py it takes).
    workdir_flag, workdir_help: the output directory's flag.
    check: cheap checks of the config, before the workdir is touched.
    errors: error types (besides ConfigError) whose message names its
      culprit: they end the program in one line.
    compilation_cache_in_workdir: keep compiled programs in the workdir.
    write_config_json: False where the workdir is an export, no run.
    flag_hint: argv -> the one line for a flag error, where the job has
      better advice than the parser's (None: the parser's).
  """
  config_flag = config_flags.DEFINE_config_file(
      "config", None, config_help, lock_config=True)
  workdir_holder = flags.DEFINE_string(workdir_flag, None, workdir_help)
  multi = distributed.DistributedFlags()
  flags.mark_flag_as_required("config")
  flag = f"--{workdir_flag}"

  def main(argv: list[str]) -> None:
    if len(argv) > 1:
      sys.exit(f"{prog}: error: unexpected arguments: {argv[1:]}")
    start_logging()
    workdir = workdir_holder.value
    config = job_config(prog, config_flag, workdir, flag)
    with one_line_errors(prog, (ConfigError,)):
      if check:
        check(config)
      check_workdir(workdir, flag)
      workdir_lock.hold_before_start(workdir, multi, flag)
    with one_line_errors(prog, (ConfigError,) + tuple(errors)):
      multi.initialize()
      workdir_lock.hold_after_initialize(workdir, multi, flag)
      if compilation_cache_in_workdir:
        compilation_cache.use_in_workdir(workdir)
      if write_config_json:
        write_config(config, workdir)
      job(config, workdir)

  absl_app.run(main, flags_parser=flag_errors.flags_parser(prog, flag_hint))


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """<workdir>/config.json: the resolved config the job ran (process 0),
  which run_info finds for the model card and the server."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, run_info.CONFIG_FILE), "w") as f:
    f.write(config.to_json_best_effort(indent=2))


@contextlib.contextmanager
def one_line_errors(prog: str, errors: tuple[type[BaseException], ...]
                    ) -> Iterator[None]:
  """`errors` raised inside end the program as `<prog>: error: <message>`.

  Only errors whose message names the culprit belong in `errors`; anything
  else keeps its traceback (a bug, not a bad config).
  """
  try:
    yield
  except errors as e:
    sys.exit(f"{prog}: error: {flag_errors.one_line(str(e))}")


def check_workdir(workdir: str, flag: str = "--workdir") -> None:
  """Creates `workdir` and writes a file there, or raises ConfigError."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError(f"{flag}={workdir} is not a writable directory: "
                      f"{e.strerror or e}") from None


def start_logging() -> None:
  """INFO lines with their time for a job's main(); absl and faiss warn."""
  # force: absl's app.run has already put its own handler (and format) on
  # the root logger, which would make basicConfig a no-op.
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(levelname)s %(message)s",
                      datefmt="%H:%M:%S", force=True)
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.getLogger("faiss").setLevel(logging.WARNING)


def job_config(prog: str, config_flag: flags.FlagHolder, workdir: str | None,
               flag: str = "--workdir") -> ml_collections.ConfigDict:
  """The job's --config; no --workdir, or a config file that failed to
  load, ends the program in one line."""
  if not workdir:
    sys.exit(f"{prog}: error: {flag} is required")
  try:
    config = config_flag.value
    config.get("stage")  # A config file that failed to load raises here.
  except OSError as e:
    sys.exit(f"{prog}: error: --config: " + flag_errors.one_line(str(e)))
  return config
