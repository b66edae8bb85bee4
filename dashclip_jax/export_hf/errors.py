"""The export's one error type: a model it cannot export, or a bad option."""


class ExportError(ValueError):
  """Printed by the CLI as one line, `export_hf: error: <message>`."""
