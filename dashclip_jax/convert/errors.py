"""The converter's two error types: a bad source, and a bad option."""


class ConversionError(ValueError):
  """A source checkpoint that cannot be converted (message names why)."""


class UsageError(ValueError):
  """A bad option or `--set` value (message names it)."""
