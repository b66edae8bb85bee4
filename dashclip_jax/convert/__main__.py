"""`python -m dashclip_jax.convert`: the converter's command line (cli.py)."""

from dashclip_jax.convert import cli

cli.main()
