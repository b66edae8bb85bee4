"""`python -m dashclip_jax.export_hf`: the export's command line (cli.py)."""

from dashclip_jax.export_hf import cli

cli.main()
