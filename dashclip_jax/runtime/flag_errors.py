"""Flag and config-override errors in one line naming the culprit, and the
early check that finds them before a job's heavy imports.

An entry module calls `exit_on_bad_config(PROG, sys.argv)` under
`if __name__ == "__main__":` ahead of its other imports (jax, the trainers:
seconds): a misspelt `--config.a.b` override or variant then fails in
under a second. The job's full flag parse (`flags_parser`, through
`app.run_job`) reports everything else the same way.

Light on purpose: absl flags, ml_collections and config_files only.
"""

from __future__ import annotations

import ast
import sys
from typing import Callable, Sequence

from absl import flags
from ml_collections import config_flags

from dashclip_jax.runtime import config_files

Hint = Callable[[list[str]], "str | None"]


def _unquoted(text: str) -> str:
  """KeyError/AttributeError messages come repr'ed, sometimes twice."""
  while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    try:
      text = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      break
  return str(text)


def one_line(text: str) -> str:
  """An error message on one line, without KeyError's repr quotes."""
  return " ".join(_unquoted(text).split())


def flag_error(error: BaseException, argv: Sequence[str]) -> str:
  """One line naming the culprit of a config/override parsing failure."""
  chain = [error]
  while chain[-1].__cause__ or chain[-1].__context__:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  root = chain[-1]
  if isinstance(root, KeyError) and root.args:
    key = str(root.args[0])
    override = next((a.split("=")[0] for a in argv if a.startswith(
        "--config.") and key in a.split("=")[0].split(".")), "--config")
    retired = config_files.retired_key_error(override)
    if retired:
      return retired
    hints = [_unquoted(str(e)) for e in chain if "Did you mean" in str(e)]
    hint = one_line(hints[0].split("\n", 1)[-1]) if hints else ""
    return f"{override}: no such config key {key!r}. {hint}".strip()
  first = str(chain[0]).splitlines()[0]
  where = first.split(": ")[0] + ": " if first.startswith("flag --") else ""
  text = one_line(str(root))
  return text if text.startswith(where) else where + text


def flags_parser(prog: str,
                 hint: Hint | None = None):
  """An `absl.app.run(flags_parser=...)` that reports bad flags in one
  line: `hint(argv)`'s where it has one (a job's own advice), else
  flag_error's."""

  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except Exception as e:  # pylint: disable=broad-except
      line = (hint and hint(argv)) or flag_error(e, argv)
      sys.exit(f"{prog}: error: {line}")

  return parse


def exit_on_bad_config(prog: str, argv: Sequence[str],
                       hint: Hint | None = None) -> None:
  """Parses --config and its --config.* overrides alone and exits with
  `<prog>: error: <line>` if the file, variant or an override is bad.

  Every other flag waits for the job's own parse, and so does a command
  line this check cannot read alone (no --config, or an override whose
  value is the next argument): then it returns and the full parse reports.
  """
  args = [a for a in argv[1:] if a.split("=")[0] == "--config"
          or a.startswith("--config.")]
  if not any(a.startswith("--config=") for a in args) or any(
      "=" not in a for a in args):
    return
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "",
                                           flag_values=values,
                                           lock_config=True)
  try:
    values([argv[0], *args])
    holder.value.get("stage")  # A file that failed to load raises here.
  except OSError as e:
    sys.exit(f"{prog}: error: --config: {one_line(str(e))}")
  except Exception as e:  # pylint: disable=broad-except
    line = (hint and hint(list(argv))) or flag_error(e, argv)
    sys.exit(f"{prog}: error: {line}")
