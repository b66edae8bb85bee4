"""The documentation's commands run, and its config flags exist.

The convention (README "Documentation conventions", docs/index.md):

* Every fenced ```bash block in README.md and docs/**/*.md runs here, unless
  the line just above its fence is `<!-- not-run: REASON -->` with a reason
  (a GPU, a cluster, a download, a server that runs until stopped).
* A runnable block runs at tiny scale, rewritten by `tiny_scale`: each
  `configs/<file>.py:<variant>` becomes the CI-scale variant of that file
  (TINY_VARIANTS: `stage2.py:demo` -> `stage2.py:tiny`), `/tmp/` paths move
  into one temporary directory, and `pip install` / `apt-get` steps of a
  `&&` chain are dropped (CI ran them). Nothing reads the fashion catalog,
  so a clean clone without ../shared/data/fashion passes.
* Blocks run in reading order (README, then the pages in mkdocs.yml's nav),
  each in its own bash from the repository root, sharing that directory: a
  later block reads what an earlier one wrote (the searches read the
  quickstart job's export). A block that rewrites to one already run is not
  run again, so the README's set-up job and the quickstart's are one run.
* Every `--config.a.b` flag in a bash block, run or not, must exist in the
  config its command loads, as written (the last `configs/<file>.py[:arg]`
  before the flag in the block, `configs/stage2.py:fashion` loaded as
  `fashion`). A flag in the prose must exist in the config its inline code
  span names, or else in at least one of configs/*.py's variants. A
  renamed flag turns this test red (test_a_renamed_flag_fails_the_check).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import resource
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from typing import Callable

import importlib.util

import ml_collections
import pytest
import yaml

import tiny_job_checks

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Each config file's CI-scale variant, for running a block at tiny scale.
TINY_VARIANTS = {
    "stage1.py": "tiny", "stage2.py": "tiny", "curate.py": "tiny",
    "ranking.py": "tiny", "eval.py": "synthetic",
}
# Variants each config file has (for prose flags that name no config).
ALL_VARIANTS = {
    "stage1.py": ("tiny", "demo", "fashion", "base"),
    "stage2.py": ("tiny", "demo", "fashion", "base"),
    "eval.py": ("fashion", "synthetic"),
    "curate.py": ("tiny", "fashion", "fashion_gpt"),
    "ranking.py": ("tiny", "fashion"),
}
# Flags the docs name on purpose as mistakes, with the error they show:
# they must stay absent from their config.
DOCUMENTED_MISTAKES = {"train.batch_sise", "stage1.model.size"}

NOT_RUN = re.compile(r"^<!--\s*not-run:(.*?)-->\s*$")
CONFIG_REF = re.compile(r"configs/(\w+\.py)(?::([\w,=.]+))?")
FLAG = re.compile(r"--config\.([A-Za-z_][\w.]*)")


@dataclasses.dataclass(frozen=True)
class Block:
  page: str          # "README.md" or "docs/<page>.md".
  line: int          # 1-based line of the opening fence.
  text: str
  not_run: str | None  # The reason, where it is marked not-run.

  @property
  def where(self) -> str:
    return f"{self.page}:{self.line}"


def pages() -> list[pathlib.Path]:
  """README, then docs pages in nav order, then any page the nav misses."""
  nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

  def walk(items):
    for item in items:
      value = next(iter(item.values())) if isinstance(item, dict) else item
      if isinstance(value, list):
        yield from walk(value)
      else:
        yield DOCS / value

  ordered = [p for p in walk(nav) if p.is_file()]
  rest = sorted(set(DOCS.rglob("*.md")) - set(ordered))
  return [ROOT / "README.md"] + ordered + rest


def bash_blocks(path: pathlib.Path) -> list[Block]:
  lines = path.read_text().splitlines()
  blocks, i = [], 0
  while i < len(lines):
    fence = re.match(r"^(\s*)(```+|~~~+)\s*(\w*)", lines[i])
    if not fence:
      i += 1
      continue
    end = i + 1
    while end < len(lines) and not lines[end].strip().startswith(
        fence.group(2)):
      end += 1
    if fence.group(3) == "bash":
      above = lines[i - 1].strip() if i else ""
      marked = NOT_RUN.match(above)
      # Dedented: a block inside a tab or list item is indented.
      blocks.append(Block(str(path.relative_to(ROOT)), i + 1,
                          textwrap.dedent("\n".join(lines[i + 1:end])),
                          marked.group(1).strip() if marked else None))
    i = end + 1
  return blocks


def all_blocks() -> list[Block]:
  return [b for p in pages() for b in bash_blocks(p)]


def prose(path: pathlib.Path) -> str:
  """The page without its fenced blocks (any language)."""
  return re.sub(r"^(```+|~~~+).*?^\1\s*$", "", path.read_text(),
                flags=re.M | re.S)


# -- flags -------------------------------------------------------------------


@functools.cache
def load_config(file: str, arg: str | None) -> ml_collections.ConfigDict:
  """configs/<file>'s get_config(arg), loaded by path as the jobs do."""
  spec = importlib.util.spec_from_file_location(
      f"docs_test_{file[:-3]}", ROOT / "configs" / file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def has_key(config: ml_collections.ConfigDict, key: str) -> bool:
  node = config
  for part in key.strip(".").split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or (
        part not in node):
      return False
    node = node[part]
  return True


def flags_with_configs(text: str) -> list[tuple[str, tuple[str, str | None]
                                                | None]]:
  """Each `--config.KEY` of `text` with the config named last before it."""
  refs = [(m.start(), (m.group(1), m.group(2))) for m in
          CONFIG_REF.finditer(text)]
  out = []
  for m in FLAG.finditer(text):
    before = [ref for pos, ref in refs if pos < m.start()]
    out.append((m.group(1).rstrip("."), before[-1] if before else None))
  return out


def flag_errors(load: Callable[[str, str | None], ml_collections.ConfigDict]
                = load_config) -> list[str]:
  """One line per documented flag that its config lacks."""
  errors = []

  def check(where, key, ref):
    if key in DOCUMENTED_MISTAKES:
      return
    if ref is not None:
      file, arg = ref
      if not has_key(load(file, arg), key):
        errors.append(f"{where}: --config.{key} is no key of "
                      f"configs/{file}:{arg or ''}")
    elif not any(has_key(load(f, v), key)
                 for f, variants in ALL_VARIANTS.items() for v in variants):
      errors.append(f"{where}: --config.{key} is no key of any config")

  for block in all_blocks():
    for key, ref in flags_with_configs(block.text):
      check(block.where, key, ref)
  for path in pages():
    for span in re.findall(r"`([^`]+)`", prose(path)):  # May wrap lines.
      for key, ref in flags_with_configs(span):
        check(f"{path.relative_to(ROOT)} (prose)", key, ref)
  return errors


def test_documented_config_flags_exist():
  assert not flag_errors(), "\n".join(flag_errors())


def test_documented_mistakes_are_still_mistakes():
  """The typo the docs show failing must stay a typo."""
  assert not has_key(load_config("stage2.py", "demo"), "train.batch_sise")
  assert not has_key(load_config("stage2.py", "demo"), "stage1.model.size")


def test_a_renamed_flag_fails_the_check():
  """A flag renamed in the config (here: train.total_steps -> num_steps, in
  a copy) turns the check red, naming the documented key and its page."""

  def renamed(file, arg):
    config = ml_collections.ConfigDict(load_config(file, arg).to_dict())
    for c in (config, config.get("stage1")):
      if c is not None and "train" in c and "total_steps" in c.train:
        c.train.num_steps = c.train.total_steps
        del c.train["total_steps"]
    return config

  errors = flag_errors(renamed)
  assert errors
  assert all("train.total_steps" in e for e in errors), errors
  assert any(e.startswith("docs/own-catalog.md:") for e in errors), errors


# -- paths and modules ----------------------------------------------------------

PY_PATH = re.compile(r"(?<![\w/.$])((?:[a-z_][\w]*/)+[\w]+\.py)\b")
MODULE = re.compile(r"python -m (dashclip_jax(?:\.\w+)*)")
# Its tables map each module's old path to its new one.
OLD_PATHS_ON_PURPOSE = {"architecture.md"}


@functools.cache
def repo_files() -> tuple[str, ...]:
  return tuple(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
               if ".git" not in p.parts)


def path_errors() -> list[str]:
  """Documented `dir/file.py` paths no repo file ends with, and `python -m
  dashclip_jax.X` modules that do not exist: moved code leaves no stale
  page. (A path may be written from the repo root or from dashclip_jax/
  or from one of its packages: `serving/engine.py`.)"""
  errors = []
  for path in pages():
    if path.name in OLD_PATHS_ON_PURPOSE:
      continue
    text = path.read_text()
    for rel in sorted(set(PY_PATH.findall(text))):
      if not any(f == rel or f.endswith("/" + rel) for f in repo_files()):
        errors.append(f"{path.relative_to(ROOT)}: no file {rel}")
    for module in sorted(set(MODULE.findall(text))):
      base = ROOT / module.replace(".", "/")
      if not (base.with_suffix(".py").is_file()
              or (base / "__main__.py").is_file()):
        errors.append(f"{path.relative_to(ROOT)}: no module {module}")
  return errors


def test_documented_paths_and_modules_exist():
  assert not path_errors(), "\n".join(path_errors())


# -- blocks ------------------------------------------------------------------


def test_every_bash_block_runs_or_says_why():
  blocks = all_blocks()
  assert len(blocks) > 10  # The parser found the pages' blocks.
  assert not [b.where for b in blocks if b.not_run == ""], (
      "a not-run marker without a reason")
  # The walk-through on the catalog page runs, whole.
  assert all(b.not_run is None for b in bash_blocks(DOCS / "own-catalog.md")
             if "/tmp/toy" in b.text and "run_table" not in b.text)


def readme_test_command() -> str:
  blocks = bash_blocks(ROOT / "README.md")
  return next(b.text for b in blocks if "pytest" in b.text).strip()


def readme_setup_command() -> str:
  """The README's install-and-run block (the main job on the default data)."""
  blocks = bash_blocks(ROOT / "README.md")
  return next(b.text for b in blocks
              if "dashclip_jax.main" in b.text and "pip install" in b.text
              ).strip()


def test_readme_stays_a_front_door():
  """The README is set-up, two tables and a map (issue 33): the rest lives
  in docs/, and every page it maps exists."""
  text = (ROOT / "README.md").read_text()
  assert len(text.splitlines()) <= 250
  for link in re.findall(r"\]\((docs/[\w./-]+\.md)", text):
    assert (ROOT / link).is_file(), link


def test_quickstart_sets_up_as_the_readme_does():
  readme = [b.text for b in bash_blocks(ROOT / "README.md")][:2]
  quickstart = [b.text for b in bash_blocks(DOCS / "quickstart.md")][:2]
  assert quickstart == readme


def test_ci_runs_exactly_the_readme_test_command():
  ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
  assert ci[-1] == readme_test_command()
  assert "mkdocs build --strict" in readme_test_command()
  # -q drops the warnings --strict counts: broken links would pass.
  assert " -q " not in readme_test_command().split("mkdocs")[1].split("&&")[0]


def tiny_scale(text: str, tmp: pathlib.Path) -> str:
  """A block as the test runs it (see the module docstring)."""
  text = CONFIG_REF.sub(
      lambda m: f"configs/{m.group(1)}:{TINY_VARIANTS[m.group(1)]}", text)
  text = text.replace("/tmp/", f"{tmp}/")
  steps = re.split(r"\s+&&\s+", text)
  kept = [s for s in steps if not re.match(r"(pip|apt-get) ", s.strip())]
  return " && ".join(kept)


def test_tiny_scale_rewrites():
  tmp = pathlib.Path("/x")
  assert tiny_scale("pip install -e . && python -m dashclip_jax.main "
                    "--config=configs/stage2.py:demo --workdir=/tmp/d",
                    tmp) == ("python -m dashclip_jax.main --config="
                             "configs/stage2.py:tiny --workdir=/x/d")
  assert "eval.py:synthetic" in tiny_scale("configs/eval.py:fashion", tmp)


def children_cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def test_documented_commands_run(tmp_path):
  # `python` in a block is this interpreter; `dashclip_jax` this checkout.
  path = os.pathsep.join([os.path.dirname(sys.executable),
                          os.environ.get("PATH", "")])
  env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=path,
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
  done, timings, stdout = set(), [], {}
  for block in all_blocks():
    if block.not_run is not None:
      continue
    script = tiny_scale(block.text, tmp_path)
    if script in done:
      continue
    done.add(script)
    start, cpu = time.monotonic(), children_cpu_s()
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT,
                         env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    timings.append(f"{time.monotonic() - start:6.1f} s wall "
                   f"{children_cpu_s() - cpu:6.1f} s CPU  {block.where}")
    print(timings[-1], flush=True)
    assert out.returncode == 0, (
        f"{block.where} failed ({out.returncode}):\n{script}\n"
        f"{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    stdout[script] = out.stdout
  # The README's set-up job is the full tiny main job: its stages and
  # evaluation left what they must.
  setup = tiny_scale(readme_setup_command(), tmp_path)
  workdir = pathlib.Path(setup.split("--workdir=")[1].split()[0])
  assert workdir.parent == tmp_path, setup
  tiny_job_checks.check_full_tiny_job(workdir, stdout[setup])
  # The catalog walk-through trained a model and searched it.
  assert (tmp_path / "toy" / "run" / "stage2" / "models").is_dir()
  assert (tmp_path / "toy" / "index" / "products.npy").is_file()


def test_mkdocs_strict_fails_on_a_broken_link(tmp_path):
  """The README's build command, on a copy of the docs with a broken link."""
  pytest.importorskip("mkdocs", reason="mkdocs-material is in the [test] extra")
  shutil.copytree(DOCS, tmp_path / "docs")
  shutil.copy(ROOT / "mkdocs.yml", tmp_path)
  with open(tmp_path / "docs" / "quickstart.md", "a") as f:
    f.write("\n[gone](no-such-page.md)\n")
  build = next(s for s in readme_test_command().split(" && ")
               if s.startswith("mkdocs "))
  argv = shlex.split(build)
  argv[argv.index("-d") + 1] = str(tmp_path / "site")
  out = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path,
                       capture_output=True, text=True, check=False)
  assert out.returncode != 0
  assert "no-such-page.md" in out.stdout + out.stderr
