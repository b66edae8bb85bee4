"""What a job runs on, beside its own work (dashclip_jax/app.py uses them).

  config_files       configs/*.py: loading, `:variant` arguments,
                     ConfigError, the retired keys' one-line errors
  distributed        the multi-process flags and jax.distributed
  workdir_lock       one job per workdir
  compilation_cache  jax's persistent cache in the workdir
  host_memory        glibc settings that keep XLA's CPU temporaries
  run_info           a run's files (config.json, evaluations), found from
                     one of its model dirs
"""
