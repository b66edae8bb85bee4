"""Experiment config files (configs/*.py): loading one, its `:variant,k=v`
argument, the ConfigError every job raises for a value it cannot use, and
the one-line errors for keys the configs no longer have.

The defaults the config files share (stage_config, data_block, ...) are
configs/common.py's, out of the package; the command-line side (flags,
one-line exits) is dashclip_jax/app.py's.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections


class ConfigError(ValueError):
  """A config value, flag or path an entry point cannot use.

  The message names the culprit and what to set instead; the entry points
  print it as one line, `<prog>: error: <message>`, with no traceback.
  """


# What the nested `stage1` block of a stage-2 config takes from the stage-2
# config itself (main.stage1_config_of): one override moves both stages.
STAGE1_FROM_STAGE2 = ("data", "model", "mesh", "seed")
STAGE1_SHARES = ("stage 1 runs on the stage-2 config's data, model, mesh "
                 "and seed")


def stage1_override_error(argv: list[str]) -> str | None:
  """What to set instead of a `--config.stage1.<model|data|...>` override
  (the main job's flag hint)."""
  for arg in argv:
    parts = arg.split("=")[0].split(".")
    if parts[:2] == ["--config", "stage1"] and len(parts) > 2 and (
        parts[2] in STAGE1_FROM_STAGE2):
      instead = ".".join(["--config"] + parts[2:])
      return (f"{arg.split('=')[0]}: {STAGE1_SHARES}; set {instead} "
              "instead (it moves both stages)")
  return None


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "tiny,batch=16" into typed fields over `defaults`.

  A bare word sets `variant` (when `variant` is a default); `k=v` pairs are
  cast to the default's type. Unknown keys are rejected with the known ones.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    if "=" not in item:
      if "variant" not in defaults:
        raise ValueError(f"config argument {item!r}: expected key=value")
      out.variant = item
      continue
    key, value = (s.strip() for s in item.split("=", 1))
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: "
                       f"{sorted(defaults)}")
    kind = type(defaults[key])
    out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool \
        else kind(value)
  return out


def config_module(path: str | os.PathLike):
  """A configs/<name>.py file as a module (configs/ is not a package)."""
  path = os.fspath(path)
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"dashclip_{name}_config",
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling_config(anchor: str, name: str):
  """configs/<name>.py beside the config file `anchor` (its __file__).

  Not `import common` or `from configs import stage1`: configs/ is no
  installed package, so such an import works only where its folder is on
  sys.path, not for `--config=/path/to/configs/stage2.py` run elsewhere.
  """
  return config_module(os.path.join(
      os.path.dirname(os.path.abspath(anchor)), f"{name}.py"))


def load_config(path: str | os.PathLike, arg: str | None = None,
                overrides: dict | None = None) -> ml_collections.ConfigDict:
  """`path`'s get_config(arg) with {"a.b": value} overrides applied, as
  `--config=path:arg --config.a.b=value` gives it (for tests, notebooks)."""
  config = config_module(path).get_config(arg)
  for key in overrides or {}:
    if retired_key_error(key):
      raise ConfigError(retired_key_error(key))
  config.update_from_flattened_dict(dict(overrides or {}))
  return config


# Keys of the per-job data blocks that config.data replaced -> (what to
# set instead, why); flag_error and data.sources name it in one line.
RETIRED_KEYS = {
    "data.catalog_dir": ("data.path", "a folder in the fashion layout, with "
                         "data.source=fashion; a table: data.catalog_path "
                         "with data.source=table"),
    "data.catalog_file": ("data.catalog_path", "the table's own path, with "
                          "data.source=table"),
    "data.qrels_path": ("data.relevance_test_path", ""),
    "data.qrels_max_bad_fraction": ("data.relevance_test_max_bad_fraction",
                                    ""),
    "data.columns": ("attributes", "the ranking job's attribute columns"),
    "max_bad_fraction": ("data.max_bad_fraction", ""),
    "final_eval.data": ("data", "the final evaluation reads config.data"),
}


def retired_key_error(key: str) -> str | None:
  """The one line for a retired config key (`data.catalog_dir`, a key below
  one, or a flag `--config.data.catalog_dir=x`: then it names flags), None
  for any other key."""
  flag = "--" if key.startswith("--") else ""
  key = key.split("=")[0].removeprefix("--").removeprefix("config.")
  new, why = _replacement(key)
  if new is None:
    return None
  return (f"{flag}config.{key} is no longer a config key: set "
          f"{flag}config.{new} instead" + (f" ({why})" if why else ""))


def _replacement(key: str) -> tuple[str | None, str]:
  """-> (the key that replaced `key`, why), following renames of renames
  (final_eval.data.qrels_path -> data.qrels_path -> data.relevance_test_path);
  (None, "") for a key that was never retired."""
  for old, (new, why) in RETIRED_KEYS.items():
    if key == old or key.startswith(old + "."):
      new += key[len(old):]
      newer, newer_why = _replacement(new)
      return (newer, newer_why or why) if newer else (new, why)
  return None, ""
