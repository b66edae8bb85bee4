"""One job per workdir (workdir_lock.py): a second main job is refused in
one line naming the first; a lock left by a killed job blocks nothing."""

import os
import pathlib
import signal
import socket
import subprocess
import sys

import pytest

from dashclip_jax.runtime import workdir_lock

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAIN = [sys.executable, "-m", "dashclip_jax.main",
        "--config=configs/stage2.py:tiny"]


def _env():
  return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")


def _start_holder(workdir):
  """A process that takes the workdir lock as a main job does and stays."""
  code = ("import sys, time\n"
          "from dashclip_jax.runtime import workdir_lock\n"
          "workdir_lock.hold(sys.argv[1])\n"
          "print('held', flush=True)\n"
          "time.sleep(600)\n")
  proc = subprocess.Popen([sys.executable, "-c", code, str(workdir)],
                          cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


@pytest.fixture
def holder(tmp_path):
  proc = _start_holder(tmp_path / "w")
  yield proc
  if proc.poll() is None:
    proc.kill()
  proc.wait()


def test_second_main_job_is_refused_in_one_line(tmp_path, holder):
  out = subprocess.run(MAIN + [f"--workdir={tmp_path}/w"], cwd=ROOT,
                       env=_env(), capture_output=True, text=True,
                       timeout=300)
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr
  assert lines[0].startswith("dashclip_jax.main: error: --workdir=")
  assert "in use by another job" in lines[0]
  assert f"pid {holder.pid} on host {socket.gethostname()}" in lines[0]
  # Refused before any work: nothing but the lock (and check_workdir's
  # vanished temp file) in the workdir.
  assert os.listdir(tmp_path / "w") == [workdir_lock.LOCK_FILE]


def test_lock_of_a_killed_job_does_not_block_a_rerun(tmp_path, holder):
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  # The killed job's pid and host are still in the file; the lock is not.
  assert workdir_lock.holder(tmp_path / "w")["pid"] == holder.pid
  # The rerun gets past the lock: it stops at a later check instead
  # (config.stage is read after the lock is taken).
  out = subprocess.run(MAIN + [f"--workdir={tmp_path}/w",
                               "--config.stage=nope"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
  assert out.returncode != 0
  assert "config.stage must be" in out.stderr, out.stderr
  assert "in use" not in out.stderr
  # ... and wrote its own pid: the lock was its while it ran.
  assert workdir_lock.holder(tmp_path / "w")["pid"] != holder.pid


def test_hold_in_process(tmp_path):
  workdir_lock.hold(str(tmp_path))
  workdir_lock.hold(str(tmp_path))  # The same process again: a no-op.
  proc = subprocess.run(
      [sys.executable, "-c",
       "import sys; from dashclip_jax.runtime import workdir_lock;"
       "workdir_lock.hold(sys.argv[1])", str(tmp_path)],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert f"pid {os.getpid()}" in proc.stderr
  assert "WorkdirBusyError" in proc.stderr


def test_evaluation_run_holds_the_workdir_lock(tmp_path, holder):
  out = subprocess.run(
      [sys.executable, "-m", "dashclip_jax.evaluation.run",
       "--config=configs/eval.py:synthetic", f"--workdir={tmp_path}/w"],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr
  assert lines[0].startswith("evaluation.run: error: --workdir=")
  assert f"pid {holder.pid} on host {socket.gethostname()}" in lines[0]


def test_evaluation_run_prints_non_finite_embeddings_in_one_line():
  from dashclip_jax import index as index_lib  # pylint: disable=g-import-not-at-top
  from dashclip_jax.evaluation import run as run_lib  # pylint: disable=g-import-not-at-top
  assert issubclass(index_lib.NonFiniteEmbeddingError,
                    run_lib.one_line_errors())
